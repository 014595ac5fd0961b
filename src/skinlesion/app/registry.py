"""Which models the app serves and each one loaded once: `--model`, `MODEL_ID`, then the shipped `weights/`.

- `ModelSpec` / `model_sources`: the models to serve, with `ID@REV` pinning a Hub revision;
- `ModelRegistry`: each model loaded once per process and shared by all requests; a model that failed to
  load (offline Hub, bad id, broken folder) is reported on the page with why, never retried per request.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..constants import MODEL_ID_ENV
from ..hub import HubUnavailableError, looks_like_hub_id

if TYPE_CHECKING:
    from ..inference.predictor import Predictor

logger = logging.getLogger(__name__)


class ModelUnavailableError(RuntimeError):
    """The requested model is not configured or failed to load (the message says why)."""


SHIPPED_ORIGIN = "shipped"  # ModelSpec.origin of the repo's own weights/ folder (the fallback)
HUB_URL = "https://huggingface.co"


@dataclass(frozen=True)
class ModelSpec:
    source: str                 # local folder or Hub id
    revision: str | None = None  # Hub revision (branch, tag or commit); None for local folders
    name: str = ""              # what the model dropdown shows; unique within a registry
    origin: str = ""            # where the app was told about it: "--model", MODEL_ID_ENV or SHIPPED_ORIGIN

    @property
    def display(self) -> str:
        return self.name or self.source

    @property
    def is_hub(self) -> bool:
        return looks_like_hub_id(self.source)

    @property
    def hub_id(self) -> str:
        return self.source.removeprefix("hf-hub:")


def parse_model_spec(text: str) -> ModelSpec:
    """'owner/name@rev' -> Hub id pinned to rev; a path (even one containing '@') stays as is."""
    text = text.strip()
    if not text:
        raise ValueError("empty model name")
    source, revision = text, None
    if "@" in text and not Path(text).exists():
        head, _, rev = text.rpartition("@")
        if head and rev:
            source, revision = head, rev
    return ModelSpec(source=source, revision=revision)


def _base_name(spec: ModelSpec) -> str:
    if looks_like_hub_id(spec.source):
        name = spec.source.removeprefix("hf-hub:")
    else:
        path = Path(spec.source)
        name = path.resolve().name or str(path)
    return f"{name}@{spec.revision}" if spec.revision else name


def name_specs(specs: Sequence[ModelSpec]) -> list[ModelSpec]:
    """Give each spec a unique display name (folder name or Hub id; '(2)' on a clash); drop exact repeats."""
    seen_sources: set[tuple[str, str | None]] = set()
    taken: set[str] = set()
    named = []
    for spec in specs:
        key = (str(Path(spec.source).resolve()) if Path(spec.source).exists() else spec.source, spec.revision)
        if key in seen_sources:
            continue
        seen_sources.add(key)
        base = spec.name or _base_name(spec)
        name, n = base, 2
        while name in taken:
            name, n = f"{base} ({n})", n + 1
        taken.add(name)
        named.append(replace(spec, name=name))
    return named


@dataclass(frozen=True)
class ModelSources:
    specs: list[ModelSpec]
    notes: list[str]  # what the page should say about sources that were skipped (e.g. empty weights/)


def model_sources(cli_models: Sequence[str] = (), env_value: str | None = None,
                  default_folder: Path | None = None) -> ModelSources:
    """`--model` entries, then `MODEL_ID` entries, then the shipped folder (when it holds a model).

    The first model that loads is the default, so a Space with MODEL_ID set serves that Hub model, and
    the shipped `weights/` only when MODEL_ID is unset or failed to load (the page says which and why).
    """
    specs = [replace(parse_model_spec(m), origin="--model") for m in cli_models]
    specs += [replace(parse_model_spec(m), origin=MODEL_ID_ENV) for m in (env_value or "").split(",") if m.strip()]
    notes: list[str] = []
    if default_folder is not None:
        if (default_folder / "config.json").is_file():
            specs.append(ModelSpec(str(default_folder), None, "shipped model", SHIPPED_ORIGIN))
        else:
            notes.append(f"No shipped model yet: `{default_folder.name}/` holds no model folder "
                         "(no config.json). Add one with `--model PATH_OR_HUB_ID` or the MODEL_ID variable.")
    return ModelSources(name_specs(specs), notes)


def load_predictor(spec: ModelSpec, *, variant: str = "auto") -> Predictor:
    """`variant`: which forward serves it (`Predictor.from_pretrained`); auto = the fastest this folder allows."""
    from ..inference.predictor import Predictor

    return Predictor.from_pretrained(spec.source, revision=spec.revision, variant=variant)


@dataclass
class _Entry:
    spec: ModelSpec
    lock: threading.Lock = field(default_factory=threading.Lock)
    predictor: Predictor | None = None
    error: str | None = None
    load_seconds: float | None = None
    commit: str | None = None   # the Hub commit a Hub model was loaded from (from the local cache)


class ModelRegistry:
    """Models by display name, each loaded at most once per process and shared by every request.

    Thread-safe: concurrent first requests for one model wait on its lock and get the same object.
    A failed load is remembered with its message (shown on the page and raised as `ModelUnavailableError`).
    """

    def __init__(self, specs: Sequence[ModelSpec], *, notes: Sequence[str] = (),
                 loader: Callable[[ModelSpec], Predictor] = load_predictor):
        self._entries = {spec.display: _Entry(spec) for spec in name_specs(specs)}
        self.notes = list(notes)
        self._loader = loader

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    def get(self, name: str | None) -> Predictor:
        """The model called `name` (None or "": the default one), loading it on first use."""
        name = name or self.default_name
        if name is None:
            raise ModelUnavailableError("No model is available in this app (see the Models panel). "
                                        + " ".join(self.notes))
        entry = self._entries.get(name)
        if entry is None:
            raise ModelUnavailableError(f"Unknown model {name!r}; this app serves {self.names}")
        with entry.lock:
            if entry.predictor is None and entry.error is None:
                start = time.perf_counter()
                try:
                    entry.predictor = self._loader(entry.spec)
                except Exception as err:  # noqa: BLE001 - any load failure is shown on the page and logged
                    entry.error = _load_error_message(entry.spec, err)
                else:
                    entry.commit = _cached_commit(entry.spec) if entry.spec.is_hub else None
                entry.load_seconds = time.perf_counter() - start
        if entry.predictor is None:
            raise ModelUnavailableError(f"Model {entry.spec.display!r} is unavailable: {entry.error}")
        return entry.predictor

    def load_all(self, *, warm_cam: bool = True) -> None:
        """Load every model now (at start-up), so the page can say which ones work."""
        for name in self._entries:
            with contextlib.suppress(ModelUnavailableError):  # recorded in the entry, shown by status_markdown
                self.get(name)
        if warm_cam and self.available_names:
            # pytorch-grad-cam takes seconds to import: pay it at start, not on the first request.
            from ..inference import cam  # noqa: F401

    def is_loaded(self, name: str) -> bool:
        entry = self._entries.get(name)
        return entry is not None and entry.predictor is not None

    def error(self, name: str) -> str | None:
        entry = self._entries.get(name)
        return None if entry is None else entry.error

    @property
    def available_names(self) -> list[str]:
        """Models loaded, or not tried yet (lazy); excludes the ones that failed."""
        return [name for name, entry in self._entries.items() if entry.error is None]

    @property
    def default_name(self) -> str | None:
        available = self.available_names
        return available[0] if available else None

    def _failed_requests(self) -> list[_Entry]:
        """Models asked for by --model / MODEL_ID that failed to load (the shipped folder is the fallback)."""
        return [e for e in self._entries.values() if e.error is not None and e.spec.origin != SHIPPED_ORIGIN]

    def serving_summary(self) -> str:
        """One plain-text line (the Models panel's title): which model answers by default, and from where."""
        default = self.default_name
        if default is None:
            return "Model: none available (see why below)"
        spec = self._entries[default].spec
        if spec.origin == SHIPPED_ORIGIN:
            where = f"shipped {Path(spec.source).name}/ folder"
        elif spec.is_hub:
            where = f"{spec.hub_id}@{spec.revision or 'main'} from the Hugging Face Hub"
        else:
            where = f"local folder {Path(spec.source).name}"
        failed = self._failed_requests()
        return f"Model: {where}" + (f" ({len(failed)} requested model(s) failed to load, see why)" if failed else "")

    def serving_markdown(self) -> str:
        """Which model answers by default and where it came from; what failed and why when it is a fallback."""
        default = self.default_name
        if default is None:
            return ("### ⚠ No model is available\nPredictions are disabled until a model loads. "
                    "Start the app with `--model PATH_OR_HUB_ID` (or set MODEL_ID).")
        entry = self._entries[default]
        lines = [f"**Serving {default}**: {describe_source(entry.spec, entry.commit)}."]
        failed = self._failed_requests()
        if failed:
            asked = ", ".join(f"`{e.spec.display}` ({e.spec.origin or 'requested'})" for e in failed)
            fallback = (f", so this app serves its shipped `{Path(entry.spec.source).name}/` folder instead"
                        if entry.spec.origin == SHIPPED_ORIGIN else "")
            lines.append(f"\n⚠ **{asked} could not be loaded**{fallback}. Why: the ✗ line(s) below.")
        return "\n".join(lines)

    def status_markdown(self) -> str:
        lines = [self.serving_markdown(), "", "**Models**", ""]
        for name, entry in self._entries.items():
            source = describe_source(entry.spec, entry.commit)
            if entry.predictor is not None:
                p = entry.predictor
                lines.append(f"- ✓ **{name}** — {source}: {p.loaded.architecture}, {len(p.label_names)} classes, "
                             f"{p.preprocessing.input_size} px, TTA `{p.tta}`, "
                             f"temperature {p.loaded.temperature:.2f}, forward on `{p.variant}`{_ood_note(p)}")
            elif entry.error is not None:
                lines.append(f"- ✗ **{name}** — {source}: not available. {entry.error}")
            else:
                lines.append(f"- **{name}** — {source}: loads on first use")
        lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines)


def _ood_note(p: Predictor) -> str:
    return "" if (p.loaded.extras.get("ood") or {}).get("threshold") is not None else \
        " (no out-of-distribution threshold: that check is off)"


def describe_source(spec: ModelSpec, commit: str | None = None) -> str:
    """Markdown: where a model comes from (Hub id + revision + commit, the shipped folder, or a local folder)."""
    if spec.origin == SHIPPED_ORIGIN:
        return f"the shipped `{Path(spec.source).name}/` folder of this app"
    via = f" (from {spec.origin})" if spec.origin else ""
    if not spec.is_hub:
        return f"local folder `{spec.source}`{via}"
    revision = f"revision `{spec.revision}`" if spec.revision else "the default branch (unpinned)"
    pinned_commit = commit is not None and spec.revision is not None and commit.startswith(spec.revision)
    at = f", commit `{commit[:12]}`" if commit and not pinned_commit else ""
    return f"Hub model [`{spec.hub_id}`]({HUB_URL}/{spec.hub_id}) at {revision}{at}{via}"


def _cached_commit(spec: ModelSpec) -> str | None:
    """The commit a Hub model's files were taken from: the snapshot folder its config.json sits in.

    Local cache only (no request). None when it cannot be told, e.g. a custom cache layout; the page
    then shows the revision without a commit.
    """
    from huggingface_hub import try_to_load_from_cache

    from ..constants import MODEL_CONFIG_FILE

    path = try_to_load_from_cache(spec.hub_id, MODEL_CONFIG_FILE, revision=spec.revision)
    return Path(path).parent.name if isinstance(path, str) else None


def _load_error_message(spec: ModelSpec, err: Exception) -> str:
    """The message the page shows; the expected failures are logged without a traceback."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    from ..models.folder import ModelFolderError

    if isinstance(err, (HubUnavailableError, ModelFolderError)):
        message = str(err)
    elif isinstance(err, GatedRepoError):
        message = (f"Hub model `{spec.hub_id}` is gated: accept its terms on the Hub and give this app a token "
                   "with access (the Space secret HF_TOKEN).")
    elif isinstance(err, RepositoryNotFoundError):
        message = (f"Hub model `{spec.hub_id}` does not exist, or it is private and this app has no token with "
                   "access (the Space secret HF_TOKEN). Check the id.")
    elif isinstance(err, RevisionNotFoundError):
        message = (f"Hub model `{spec.hub_id}` has no revision `{spec.revision}` (no such branch, tag or commit). "
                   "Check the part after `@`.")
    else:
        logger.error("model %s failed to load", spec.display, exc_info=err)
        return f"{type(err).__name__}: {err}"
    logger.warning("model %s unavailable: %s", spec.display, message)
    return message
