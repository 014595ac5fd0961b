"""What the Gradio app's callbacks do, as plain functions testable without a server or a browser.

`app.py` holds only the layout and the event wiring; every callback calls `analyze`, `compare` or
`model_changed` here. The pieces:
- `ModelSpec` / `model_sources`: which models to serve (`--model`, `MODEL_ID`, then the shipped
  `weights/` as the fallback), with `ID@REV` pinning a Hub revision.
- `ModelRegistry`: each model loaded once per process and shared by all requests; a model that
  failed to load (offline Hub, bad id, broken folder) is reported on the page, never retried per request.
- formatting: a `Prediction` / `Explanation` turned into `gr.Label` data and markdown.
- errors a user can act on (a bad upload, an unknown class) raised as `UserError`, a `gr.Error`
  whose message the page and API clients show (without a traceback in the server log).
- the out-of-distribution refusal and the similar-cases panel (`extras_view`), computed from the
  `/predict` details alone, and `CaseImages`: where the cases' pictures come from (a local folder or a
  Hub dataset, loaded once), or why there are none.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
from PIL import Image

from .hub import HubUnavailableError, looks_like_hub_id
from .imageio import ImageLoadError, is_image_file, load_rgb
from .taxonomy import describe_label

if TYPE_CHECKING:
    from .predictor import Explanation, Prediction, Predictor

logger = logging.getLogger(__name__)

PREDICTED = "predicted"          # class-to-explain choice meaning "the predicted class"
MODEL_DEFAULT_TTA = "default"    # TTA choice meaning "the model folder's own mode" (its calibration was fitted with it)
TOP_K = 3                        # classes shown in the gr.Label
MIN_IMAGE_SIDE = 32              # smaller uploads are thumbnails or mistakes, not dermoscopic photos
DISPLAY_MAX_SIDE = 1024          # overlays/heatmaps are shown (and returned by the API) at most this big
MAX_COMPARE_MODELS = 4           # one comparison request runs at most this many CAMs (CPU budget)
MAX_EXAMPLES = 24
# ScoreCAM runs one forward pass per activation channel: minutes per request on a CPU Space.
SLOW_CAM_METHODS = frozenset({"scorecam"})
MODEL_ID_ENV = "MODEL_ID"                 # comma-separated model folders / Hub ids (Spaces variables)
EXAMPLES_DATASET_ENV = "EXAMPLES_DATASET"  # Hub dataset id[@rev] whose images become the examples
CASES_DATASET_ENV = "CASES_DATASET"        # Hub dataset id[@rev] holding the indexed training images
CASE_THUMBNAIL_SIDE = 192                  # similar-case thumbnails in the gallery
OOD_REFUSAL = ("This does not look like a dermoscopic image of a skin lesion; "
               "the classes below are not meaningful")

DISCLAIMER = (
    "**Research demo, not a diagnosis.** This model was trained on public dermoscopy images and can be "
    "confidently wrong. It must never be used to diagnose, treat or triage anyone: if a skin lesion "
    "worries you, see a doctor or dermatologist."
)


class UserError(gr.Error):
    """A problem the user can fix (bad upload, unknown class): shown in the page, no traceback in the log."""

    def __init__(self, message: str, title: str = "Error"):
        super().__init__(message, title=title, print_exception=False)
        logger.info("user error: %s", message)


class ModelUnavailableError(RuntimeError):
    """The requested model is not configured or failed to load (the message says why)."""


# -- which models -------------------------------------------------------------------------------------
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


# -- the registry -----------------------------------------------------------------------------------
def load_predictor(spec: ModelSpec) -> Predictor:
    from .predictor import Predictor

    return Predictor.from_pretrained(spec.source, revision=spec.revision)


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
            from . import cam  # noqa: F401

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
                             f"temperature {p.loaded.temperature:.2f}{_ood_note(p)}")
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

    from .constants import MODEL_CONFIG_FILE

    path = try_to_load_from_cache(spec.hub_id, MODEL_CONFIG_FILE, revision=spec.revision)
    return Path(path).parent.name if isinstance(path, str) else None


def _load_error_message(spec: ModelSpec, err: Exception) -> str:
    """The message the page shows; the expected failures are logged without a traceback."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    from .modelfolder import ModelFolderError

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


# -- inputs -----------------------------------------------------------------------------------------
def _upload_path_and_name(image: Any) -> tuple[Any, str]:
    """gr.Image payload (preprocess=False: a dict with path/url/orig_name), path, PIL or array -> (source, name)."""
    if isinstance(image, dict):
        path, url = image.get("path"), image.get("url") or ""
        name = image.get("orig_name") or "the uploaded image"
        if path:
            return path, name
        if url.startswith("data:"):
            try:
                return base64.b64decode(url.split(",", 1)[1], validate=False), name
            except (ValueError, IndexError) as err:
                raise UserError(f"Could not read the image: {name} is not valid base64 data") from err
        raise UserError("The upload carried no file. Try uploading the image again.")
    if isinstance(image, (str, os.PathLike)):
        return image, Path(image).name
    return image, "the image"


def decode_upload(image: Any) -> Image.Image:
    """Whatever the image component sends -> RGB PIL image, or a gr.Error saying what is wrong with it."""
    if image is None:
        raise UserError("Upload a dermoscopic image first (file, clipboard or webcam).", title="No image")
    source, name = _upload_path_and_name(image)
    try:
        rgb = load_rgb(source)
    except ImageLoadError as err:
        # The message starts with the server-side temp path: show the user's own file name instead.
        message = str(err).replace(str(source), name) if isinstance(source, (str, os.PathLike)) else str(err)
        raise UserError(f"Could not read the image: {message}", title="Unreadable image") from err
    w, h = rgb.size
    if min(w, h) < MIN_IMAGE_SIDE:
        raise UserError(f"The image is only {w}x{h} pixels; it needs at least {MIN_IMAGE_SIDE} pixels on each "
                       "side. Upload the dermoscopic photo itself, not a thumbnail.", title="Image too small")
    return rgb


def cam_method_choices() -> list[str]:
    from .cam import CAM_METHODS

    return [name for name in CAM_METHODS if name not in SLOW_CAM_METHODS]


def tta_choices() -> list[tuple[str, str]]:
    from .tta import TTA_MODES

    return [("model default", MODEL_DEFAULT_TTA)] + [(mode, mode) for mode in TTA_MODES]


def target_choices(label_names: Sequence[str]) -> list[tuple[str, str]]:
    """Class-to-explain dropdown: 'predicted' first, then each of the model's labels with its full name."""
    return [("predicted class", PREDICTED)] + [(f"{describe_label(c).name} ({c})", c) for c in label_names]


def _check_method(method: str | None) -> str:
    method = (method or "gradcam").strip().lower()
    if method not in cam_method_choices():
        raise UserError(f"Unknown CAM method {method!r}; choose one of {cam_method_choices()}")
    return method


def _check_tta(tta: str | None) -> str | None:
    from .tta import TTA_MODES

    if tta in (None, "", MODEL_DEFAULT_TTA):
        return None
    if tta not in TTA_MODES:
        raise UserError(f"Unknown TTA mode {tta!r}; choose one of {[MODEL_DEFAULT_TTA, *TTA_MODES]}")
    return tta


def _check_alpha(alpha: float | None) -> float:
    alpha = 0.5 if alpha is None else float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"Overlay opacity must be between 0 and 1, got {alpha}")
    return alpha


def _check_target(target: str | None, label_names: Sequence[str]) -> str | None:
    if target in (None, "", PREDICTED):
        return None
    if target not in label_names:
        raise UserError(f"This model has no class {target!r}; its classes are {list(label_names)}")
    return target


def _get_model(registry: ModelRegistry, name: str | None) -> Predictor:
    try:
        return registry.get(name)
    except ModelUnavailableError as err:
        raise UserError(str(err), title="Model unavailable") from err


@contextlib.contextmanager
def _explain_errors() -> Iterator[None]:
    from .cam import UnsupportedModelError

    try:
        yield
    except ImageLoadError as err:
        raise UserError(f"Could not read the image: {err}", title="Unreadable image") from err
    except UnsupportedModelError as err:
        raise UserError(f"This model cannot be explained with a CAM: {err}") from err


# -- formatting -------------------------------------------------------------------------------------
def label_key(code: str) -> str:
    name = describe_label(code).name
    return f"{name} ({code})" if name.lower() != code.lower() else code


def label_data(prediction: Prediction) -> dict[str, float]:
    """Every class's calibrated probability, keyed by 'Full name (code)' (gr.Label shows the top TOP_K)."""
    return {label_key(code): float(p) for code, p in prediction.probs.items()}


def _pct(p: float) -> str:
    return f"{100 * p:.1f}%"


def summary_markdown(prediction: Prediction, *, model_name: str, target_label: str, method: str) -> str:
    cls = describe_label(prediction.label)
    lines = [f"**Not a result.** {OOD_REFUSAL}: the model ranks its classes for any picture, lesion or not.\n"
             ] if prediction.out_of_distribution else []
    lines += [f"### {cls.name} (`{prediction.label}`) — {_pct(prediction.confidence)}",
             f"Calibrated confidence of the predicted class: **{_pct(prediction.confidence)}**  "]
    if prediction.malignant_prob is not None:
        malignant = " + ".join(describe_label(c).name.lower() for c in prediction.probs if describe_label(c).malignant)
        lines.append(f"Probability of malignancy ({malignant}): **{_pct(prediction.malignant_prob)}**  ")
    else:
        lines.append("Probability of malignancy: this model has no malignant class.  ")
    if cls.description:
        lines.append(f"\n*{cls.name}:* {cls.description}")
    lines.append(f"\nModel `{model_name}`, TTA `{prediction.tta}`; the map explains "
                 f"**{label_key(target_label)}** ({method}).")
    return "\n".join(lines)


def warnings_markdown(prediction: Prediction) -> str:
    """Empty when nothing is wrong; otherwise one line per warning."""
    warnings = []
    if prediction.out_of_distribution:
        below = "" if prediction.ood_threshold is None else \
            f", below the threshold {prediction.ood_threshold:.2f} fitted on validation images"
        warnings.append(f"### ⚠ {OOD_REFUSAL}.\n"
                        "It does not look like the dermoscopic images the model was trained on "
                        f"({prediction.ood_method or 'OOD'} score {prediction.ood_score:.2f}{below}). Upload a "
                        "dermoscopic photo of the lesion: a close-up taken through a dermatoscope.")
    elif prediction.uncertain:  # under a refusal the ranking is not meaningful anyway
        warnings.append(f"⚠ **Uncertain prediction**: confidence {_pct(prediction.confidence)}, "
                        f"{_pct(prediction.agreement)} of the TTA views agree. Treat the ranking as a guess.")
    return "\n\n".join(warnings)


def agreement_markdown(prediction: Prediction) -> str:
    from .tta import get_views

    views = get_views(prediction.tta)
    agree = sum(label == prediction.label for label in prediction.view_labels)
    rows = [f"**TTA agreement: {agree}/{len(views)} views** ({_pct(prediction.agreement)}) predict "
            f"`{prediction.label}`.", "", "| view | its own top class |", "|---|---|"]
    rows += [f"| {view.name} | {'✓' if label == prediction.label else '✗'} {label_key(label)} |"
             for view, label in zip(views, prediction.view_labels, strict=True)]
    return "\n".join(rows)


def class_notes_markdown(label_names: Sequence[str]) -> str:
    """Plain-language note on every class the model knows."""
    lines = ["**What the classes mean**", ""]
    for code in label_names:
        cls = describe_label(code)
        kind = "malignant" if cls.malignant else "benign"
        desc = f" {cls.description}" if cls.description else ""
        lines.append(f"- **{cls.name}** (`{code}`, {kind}).{desc}")
    return "\n".join(lines)


def _heatmap_image(heatmap) -> Image.Image:
    from .overlay import colorize

    return Image.fromarray(colorize(heatmap))


def display_size(image: Image.Image, max_side: int = DISPLAY_MAX_SIDE) -> Image.Image:
    """Downscale (never upscale) so the longer side is at most `max_side`: cheap to encode and send."""
    scale = max_side / max(image.size)
    if scale >= 1:
        return image
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                        Image.Resampling.BILINEAR)


# -- the callbacks ----------------------------------------------------------------------------------
@dataclass
class Analysis:
    """Everything the result panel shows for one image and one model."""

    model_name: str
    explanation: Explanation
    label: dict[str, float]     # gr.Label value
    overlay: Image.Image        # display-sized
    heatmap: Image.Image        # colourised, display-sized
    model_input: Image.Image
    summary: str
    warnings: str
    agreement: str
    details: dict[str, Any]     # JSON: prediction.to_dict() + what was explained

    @property
    def prediction(self) -> Prediction:
        return self.explanation.prediction


def analyze(registry: ModelRegistry, image: Any, model_name: str | None = None, method: str = "gradcam",
            target: str | None = PREDICTED, tta: str | None = MODEL_DEFAULT_TTA, alpha: float = 0.5) -> Analysis:
    """One upload -> prediction + CAM with one model. Every user-fixable problem raises gr.Error."""
    method, tta_mode, alpha = _check_method(method), _check_tta(tta), _check_alpha(alpha)
    predictor = _get_model(registry, model_name)
    name = model_name or registry.default_name or ""
    target_label = _check_target(target, predictor.label_names)
    rgb = decode_upload(image)
    with _explain_errors():
        exp = predictor.explain(rgb, method=method, target=target_label, tta=tta_mode, alpha=alpha)
    pred = exp.prediction
    details = {"model": name, "method": exp.method, "target_label": exp.target_label, **pred.to_dict(),
               "ood_check": predictor.ood_status, "cases_status": predictor.cases_status}
    return Analysis(
        model_name=name, explanation=exp, label=label_data(pred),
        overlay=display_size(exp.overlay), heatmap=display_size(_heatmap_image(exp.heatmap)),
        model_input=pred.model_input,
        summary=summary_markdown(pred, model_name=name, target_label=exp.target_label, method=exp.method),
        warnings=warnings_markdown(pred), agreement=agreement_markdown(pred), details=details)


def compare(registry: ModelRegistry, image: Any, model_names: Sequence[str] | None = None, method: str = "gradcam",
            target: str | None = PREDICTED, tta: str | None = MODEL_DEFAULT_TTA,
            alpha: float = 0.5) -> tuple[list[tuple[Image.Image, str]], str]:
    """The same image through several models' CAMs -> (gallery items, markdown table).

    `target` is explained by every model that has that class; the others explain their prediction.
    """
    method, tta_mode, alpha = _check_method(method), _check_tta(tta), _check_alpha(alpha)
    names = list(model_names) if model_names else registry.available_names[:MAX_COMPARE_MODELS]
    if not names:
        raise UserError("Pick at least one model to compare." if registry.available_names
                       else "No model is available in this app.")
    if len(names) > MAX_COMPARE_MODELS:
        raise UserError(f"Compare at most {MAX_COMPARE_MODELS} models at once (got {len(names)}).")
    predictors = [(name, _get_model(registry, name)) for name in names]
    rgb = decode_upload(image)
    gallery: list[tuple[Image.Image, str]] = [(display_size(rgb), "input")]
    rows = ["| model | prediction | confidence | P(malignant) | TTA agreement | map explains |", "|---|---|---|---|---|---|"]
    for name, predictor in predictors:
        wanted = target if target not in (None, "", PREDICTED) and target in predictor.label_names else None
        with _explain_errors():
            exp = predictor.explain(rgb, method=method, target=wanted, tta=tta_mode, alpha=alpha)
        pred = exp.prediction
        gallery.append((display_size(exp.overlay), f"{name}: {pred.label} {_pct(pred.confidence)} "
                                                   f"(map: {exp.target_label})"))
        malignant = "—" if pred.malignant_prob is None else _pct(pred.malignant_prob)
        flags = (" ⚠ uncertain" if pred.uncertain else "") + (" ⚠ not dermoscopic?" if pred.out_of_distribution else "")
        rows.append(f"| {name} | {label_key(pred.label)}{flags} | {_pct(pred.confidence)} | {malignant} | "
                    f"{_pct(pred.agreement)} | {label_key(exp.target_label)} |")
    return gallery, "\n".join(rows)


@dataclass(frozen=True)
class ModelView:
    """What changes on the page when the model dropdown changes."""

    target_choices: list[tuple[str, str]]
    class_notes: str


def model_changed(registry: ModelRegistry, model_name: str | None) -> ModelView:
    """Class dropdown choices and class notes follow the selected model's labels."""
    if not model_name and registry.default_name is None:
        return ModelView(target_choices([]), "")
    predictor = _get_model(registry, model_name)
    return ModelView(target_choices(predictor.label_names), class_notes_markdown(predictor.label_names))


# -- not a dermoscopic image? similar cases ----------------------------------------------------------
class CaseImages:
    """The similar cases' pictures, found by image id (file stem) in a local folder or a Hub dataset.

    Built once at start-up; `note` says why there are none (no source given, offline, empty folder).
    """

    def __init__(self, paths: dict[str, Path] | None = None, *, source: str = "", note: str = ""):
        self.paths = dict(paths or {})
        self.source = source
        self.note = note

    @classmethod
    def from_folder(cls, folder: str | Path) -> CaseImages:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"case images folder {folder} does not exist")
        paths = {p.stem: p for p in sorted(folder.rglob("*")) if p.is_file() and is_image_file(p)}
        return cls(paths, source=str(folder), note="" if paths else f"no images in {folder}")

    @classmethod
    def from_hub(cls, dataset: str) -> CaseImages:
        """A Hub dataset of image files (cache first; offline and not cached: HubUnavailableError at once)."""
        return cls.from_folder(_dataset_images(dataset))

    @classmethod
    def unavailable(cls, note: str) -> CaseImages:
        return cls(note=note)

    def path(self, image_id: str) -> Path | None:
        return self.paths.get(image_id)

    def load(self, image_id: str, max_side: int) -> Image.Image | None:
        path = self.path(image_id)
        if path is None:
            return None
        try:
            image = load_rgb(path)
        except ImageLoadError:
            logger.warning("case image %s is unreadable", path)
            return None
        image.thumbnail((max_side, max_side))
        return image


@dataclass
class ExtrasView:
    """The parts of the result panel that follow from the OOD flag and the similar cases."""

    ood_status: str                   # one line: which check ran / that it is unavailable
    flagged: bool                     # demote the model's output (collapsed, relabelled)
    result_label: str
    cases_label: str
    cases_status: str                 # markdown: vote vs softmax, or why there are no cases
    gallery: list[tuple[Image.Image, str]]
    table: str                        # markdown table of the cases (always, images or not)


def case_caption(case: dict[str, Any]) -> str:
    confirmed = f", {case['dx_type']}" if case.get("dx_type") else ""
    return f"{label_key(case['label'])} · similarity {case['similarity']:.2f}{confirmed}"


def cases_table_markdown(found: Sequence[dict[str, Any]]) -> str:
    rows = ["| # | image | confirmed diagnosis | confirmed by | similarity | lesion |", "|---|---|---|---|---|---|"]
    rows += [f"| {i} | `{c['image_id']}` | {label_key(c['label'])} | {c.get('dx_type') or '—'} | "
             f"{c['similarity']:.3f} | {c.get('lesion_id') or '—'} |" for i, c in enumerate(found, start=1)]
    return "\n".join(rows)


def vote_markdown(vote: dict[str, float], probs: dict[str, float]) -> str:
    order = sorted(vote, key=lambda c: (vote[c], probs.get(c, 0.0)), reverse=True)[:TOP_K]
    return ("**Retrieval vote** (diagnoses of the nearest confirmed lesions, weighted by similarity, every class "
            "counted as equally common, like the softmax): "
            + ", ".join(f"{label_key(c)} {_pct(vote[c])}" for c in order)
            + ". **Calibrated softmax**: " + ", ".join(f"{label_key(c)} {_pct(probs[c])}"
                                                       for c in sorted(probs, key=probs.get, reverse=True)[:TOP_K]))


def extras_view(details: dict[str, Any] | None, images: CaseImages | None) -> ExtrasView:
    """From `/predict`'s details JSON: whether to demote the result, and the similar-cases panel."""
    details = details or {}
    flagged = bool(details.get("out_of_distribution"))
    found = details.get("similar_cases")
    not_meaningful = " — not meaningful for this image" if flagged else ""
    if found is None:
        status = f"ℹ {details.get('cases_status') or 'Similar cases are unavailable for this model.'}"
        return ExtrasView(ood_status=f"ℹ {details.get('ood_check', '')}", flagged=flagged,
                          result_label=_result_label(flagged), cases_label=f"Similar confirmed cases{not_meaningful}",
                          cases_status=status, gallery=[], table="")
    gallery = []
    for case in found:
        thumb = images.load(case["image_id"], CASE_THUMBNAIL_SIDE) if images is not None else None
        if thumb is not None:
            gallery.append((thumb, case_caption(case)))
    if images is None or not images.paths:
        why = images.note if images is not None and images.note else (
            "no case images were given (start the app with `--cases-images DIR` or set "
            f"`{CASES_DATASET_ENV}`)")
        pictures = f"Pictures unavailable: {why}; the table lists the cases."
    elif len(gallery) < len(found):
        pictures = f"{len(found) - len(gallery)} of the {len(found)} cases have no picture in `{images.source}`."
    else:
        pictures = "Click a case to see it large beside your image."
    lines = []
    if flagged:
        lines.append(f"⚠ {OOD_REFUSAL}: these are the least unlike training images, not similar lesions.")
    if details.get("retrieval_vote"):
        lines.append(vote_markdown(details["retrieval_vote"], details.get("probs", {})))
    lines.append(pictures)
    return ExtrasView(ood_status=f"ℹ {details.get('ood_check', '')}", flagged=flagged,
                      result_label=_result_label(flagged), cases_label=f"Similar confirmed cases{not_meaningful}",
                      cases_status="\n\n".join(lines), gallery=gallery, table=cases_table_markdown(found))


def extras_intro(registry: ModelRegistry, model_name: str | None, images: CaseImages | None) -> tuple[str, str]:
    """Before any analysis: (the OOD check line, the similar-cases line) for the default model."""
    if not model_name:
        return "", ""
    try:
        predictor = registry.get(model_name)
    except ModelUnavailableError:
        return "", ""
    pictures = ""
    if predictor.case_index is not None and (images is None or not images.paths):
        pictures = " Pictures: " + ((images.note if images is not None and images.note else "")
                                    or f"none given (`--cases-images DIR` or `{CASES_DATASET_ENV}`)") + "."
    return (f"ℹ {predictor.ood_status}",
            f"ℹ {predictor.cases_status}{pictures} Analyze an image to see its nearest confirmed cases.")


def _result_label(flagged: bool) -> str:
    return ("Show the model's output anyway (classes, malignancy, CAM): not meaningful for this image"
            if flagged else "Model output")


def selected_case(details: dict[str, Any] | None, index: int | None, images: CaseImages | None
                  ) -> tuple[Image.Image | None, str]:
    """The clicked gallery item (index among the cases that have a picture) -> (large picture, caption)."""
    found = [c for c in (details or {}).get("similar_cases") or []
             if images is not None and images.path(c["image_id"]) is not None]
    if index is None or not 0 <= index < len(found):
        return None, ""
    case = found[index]
    picture = images.load(case["image_id"], DISPLAY_MAX_SIDE)
    return picture, (f"**{case['image_id']}** — confirmed {label_key(case['label'])}"
                     f"{' (' + case['dx_type'] + ')' if case.get('dx_type') else ''}, similarity "
                     f"{case['similarity']:.3f}, lesion {case.get('lesion_id') or 'unknown'}")


def case_images_from(folder: str | Path | None, dataset: str | None) -> CaseImages:
    """The app's case pictures: `--cases-images DIR`, else the Hub dataset; failures become a note."""
    if folder is not None:
        return CaseImages.from_folder(folder)
    if not dataset:
        return CaseImages.unavailable("")
    try:
        return CaseImages.from_hub(dataset)
    except Exception as err:  # noqa: BLE001 - the app runs without pictures and says why on the page
        logger.warning("case images dataset %s unavailable: %s", dataset, err)
        return CaseImages.unavailable(f"the case images dataset `{dataset}` is unavailable ({err})")


def _dataset_images(dataset: str) -> Path:
    from huggingface_hub import snapshot_download

    from .hub import hub_offline_mode, require_hub

    spec = parse_model_spec(dataset)
    patterns = ["*.jpg", "*.jpeg", "*.png", "**/*.jpg", "**/*.jpeg", "**/*.png"]
    try:
        return Path(snapshot_download(spec.source, repo_type="dataset", revision=spec.revision,
                                      allow_patterns=patterns, local_files_only=True))
    except Exception:  # noqa: BLE001 - a cache miss: go online below
        pass
    if hub_offline_mode():
        raise HubUnavailableError(f"dataset {spec.source!r} is not cached and HF_HUB_OFFLINE=1 is set")
    require_hub(f"dataset {spec.source!r}")
    return Path(snapshot_download(spec.source, repo_type="dataset", revision=spec.revision, allow_patterns=patterns))


# -- examples ---------------------------------------------------------------------------------------
def example_images(folder: str | Path | None, limit: int = MAX_EXAMPLES) -> list[Path]:
    """Image files directly or recursively under `folder`, sorted, at most `limit`; [] without a folder."""
    if folder is None:
        return []
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"examples folder {folder} does not exist")
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))[:limit]


EXAMPLES_CSV = "examples.csv"  # beside the images: file,true_diagnosis,... (scripts/make_examples.py writes it)


def example_labels(paths: Sequence[Path]) -> list[str]:
    """What each example's caption says: its true diagnosis from examples.csv, else the file name."""
    import csv

    truths: dict[Path, str] = {}
    for folder in {p.parent for p in paths}:
        listing = folder / EXAMPLES_CSV
        if listing.is_file():
            with listing.open(newline="") as f:
                truths.update({folder / r["file"]: r.get("true_diagnosis", "") for r in csv.DictReader(f)
                               if r.get("file")})
    return [f"True: {truths[p]}" if truths.get(p) else p.stem for p in paths]


def examples_from_hub(dataset: str) -> Path:
    """Download (or take from cache) a Hub dataset's images; `owner/name@rev` pins a revision."""
    from huggingface_hub import snapshot_download

    from .hub import hub_offline_mode, require_hub

    spec = parse_model_spec(dataset)
    patterns = ["*.jpg", "*.jpeg", "*.png", "**/*.jpg", "**/*.jpeg", "**/*.png"]
    try:
        return Path(snapshot_download(spec.source, repo_type="dataset", revision=spec.revision,
                                      allow_patterns=patterns, local_files_only=True))
    except Exception:  # noqa: BLE001 - a cache miss: go online below
        pass
    if hub_offline_mode():
        raise HubUnavailableError(f"examples dataset {spec.source!r} is not cached and HF_HUB_OFFLINE=1 is set")
    require_hub(f"examples dataset {spec.source!r}")
    return Path(snapshot_download(spec.source, repo_type="dataset", revision=spec.revision, allow_patterns=patterns))
