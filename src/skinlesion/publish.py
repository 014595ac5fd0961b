"""Publishing to the Hugging Face Hub: a model folder (training's `--push-to-hub`) and the app as a Space.

    skinlesion publish space OWNER/NAME --dry-run                  # what would be uploaded
    skinlesion publish space OWNER/NAME --model-id OWNER/MODEL@v1  # deploy; the Space serves that model
    skinlesion publish model runs/r18 OWNER/MODEL                  # push a model folder

Every command checks first, in seconds and without uploading anything, that a push can succeed
(repo id form, HF_HUB_OFFLINE, a token, the Hub reachable). A Space receives exactly the files
`space_files` lists (the same patterns go to `upload_folder`), and files an earlier deploy left
there that are no longer in that list are deleted in the same commit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .hub import HubUnavailableError, hub_offline_mode, looks_like_hub_id, require_hub

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout this module runs from (src/skinlesion/..)
HUB_URL = "https://huggingface.co"

# What a Space needs to build and run `python app.py`, as upload_folder patterns. They are fnmatch
# patterns in which `*` also matches `/`, so "src/*" is the whole tree under src/. Each pattern starts
# with a literal top-level name, which lets `space_files` walk only those entries (never .venv/).
SPACE_ALLOW_PATTERNS = (
    "app.py",
    "requirements.txt",   # installed by the Space before anything else is copied in
    "README.md",          # its YAML front matter is the Space's configuration (sdk, app_file, ...)
    "pyproject.toml",
    "src/*",
    # The shipped model folder: weights, config, card, manifest, plots, evaluation reports, and any
    # side files (*.safetensors / *.json) a model folder may hold.
    "weights/*.safetensors",
    "weights/*.onnx",     # model.onnx: the app's forward on onnxruntime (refused, not used, if stale)
    "weights/*.json",
    "weights/*.md",
    "weights/*.csv",
    "weights/*.png",
    "examples/*",
)
# Never uploaded even under an allowed folder: bytecode, build metadata, training checkpoints,
# hidden files (editor files, half-written `.model.*` temporaries of atomic saves), logs.
SPACE_IGNORE_PATTERNS = (
    "*.pyc",
    "*__pycache__*",
    "*.egg-info*",
    "checkpoints/*",
    "*/checkpoints/*",
    ".*",
    "*/.*",
    "*.tmp",
    "*.log",
)
SPACE_REQUIRED_FILES = ("app.py", "requirements.txt", "README.md")
MODEL_IGNORE_PATTERNS = ("checkpoints/*", ".*", "*.tmp")
MODEL_REQUIRED_FILES = ("config.json", "model.safetensors")


class PublishError(RuntimeError):
    """What was asked cannot be published as it is (missing files, a bad --model-id): the message says why."""


@dataclass(frozen=True)
class UploadFile:
    path: str  # as in the repo, posix
    size: int  # bytes


# -- checks -----------------------------------------------------------------------------------------
def check_can_push(repo_id: str, *, what: str | None = None) -> None:
    """Fail at start-up (not after hours of training) when a push could not succeed.

    Cheapest first: the repo id's form, offline mode and the token need no network; only then is the
    Hub probed (a few seconds at most). `what` names the command in the messages.
    """
    what = what or f"--push-to-hub {repo_id}"
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"{what}: a Hub repo id has the form owner/name")
    if hub_offline_mode():
        require_hub(what)  # raises, naming HF_HUB_OFFLINE
    from huggingface_hub import get_token

    if not get_token():
        raise HubUnavailableError(f"{what}: no Hugging Face token; set HF_TOKEN or run `hf auth login`")
    require_hub(what)


def parse_model_id(model_id: str) -> tuple[str, str | None]:
    """'owner/name@rev' -> ('owner/name', 'rev'); anything that is not a Hub model id is a PublishError.

    Same form as the app's MODEL_ID (`app.registry.parse_model_spec`), but never a local path: a folder on
    this machine does not exist in the Space.
    """
    head, at, revision = model_id.strip().rpartition("@")
    repo = head if at else revision
    revision = revision if at else ""
    if not looks_like_hub_id(repo) or (at and not revision):
        raise PublishError(f"--model-id {model_id!r}: expected a Hub model id OWNER/NAME or OWNER/NAME@REVISION")
    return repo, revision or None


def check_model_on_hub(model_id: str) -> bool:
    """The model (and revision) exists and holds a model folder; returns whether it is private.

    Caught here, the mistake costs seconds; caught by the Space, it costs a build and a restart, after
    which the Space serves its shipped weights/ and says why.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    repo, revision = parse_model_id(model_id)
    try:
        info = HfApi().model_info(repo, revision=revision)
    except GatedRepoError as err:
        raise PublishError(f"--model-id {model_id}: the model is gated; the Space could not download it") from err
    except RepositoryNotFoundError as err:
        raise PublishError(f"--model-id {model_id}: no such model on the Hub (or your token cannot see it)") from err
    except RevisionNotFoundError as err:
        raise PublishError(f"--model-id {model_id}: {repo} has no revision {revision!r}") from err
    files = {s.rfilename for s in info.siblings or []}
    missing = [name for name in MODEL_REQUIRED_FILES if name not in files]
    if missing:
        raise PublishError(f"--model-id {model_id}: not a skinlesion model folder (missing {missing}); push one "
                           "with `skinlesion publish model FOLDER REPO_ID` or `train.py --push-to-hub`")
    return bool(info.private)


# -- what gets uploaded -----------------------------------------------------------------------------
def _filtered(folder: Path, candidates: list[Path], allow: tuple[str, ...] | None,
              ignore: tuple[str, ...]) -> list[UploadFile]:
    """upload_folder's own filter (plus its default ignores, e.g. .git/), so a listing is what it uploads."""
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    relative = sorted(p.relative_to(folder).as_posix() for p in candidates if p.is_file())
    kept = filter_repo_objects(relative, allow_patterns=list(allow) if allow else None,
                               ignore_patterns=[*ignore, *DEFAULT_IGNORE_PATTERNS])
    return [UploadFile(path, (folder / path).stat().st_size) for path in kept]


def space_files(root: str | Path = REPO_ROOT) -> list[UploadFile]:
    """The files a Space built from `root` receives, sorted; PublishError when one it needs is missing."""
    root = Path(root)
    missing = [name for name in SPACE_REQUIRED_FILES if not (root / name).is_file()]
    if missing:
        raise PublishError(f"{root} is not this app's repository (missing {missing}); pass --root REPO")
    if not (root / "README.md").read_text(encoding="utf-8").startswith("---"):
        raise PublishError(f"{root / 'README.md'}: no YAML front matter (---); a Space reads its sdk and "
                           "app_file from it")
    # Only the top-level entries the patterns can match are walked (a .venv/ holds ~100k files).
    tops = {pattern.split("/")[0] for pattern in SPACE_ALLOW_PATTERNS}
    candidates: list[Path] = []
    for top in sorted(tops):
        path = root / top
        candidates += [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []
    return _filtered(root, candidates, SPACE_ALLOW_PATTERNS, SPACE_IGNORE_PATTERNS)


def model_files(folder: str | Path) -> list[UploadFile]:
    """The files `push_folder` uploads from a model folder; PublishError when it is not one."""
    folder = Path(folder)
    missing = [name for name in MODEL_REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise PublishError(f"{folder}: not a model folder (missing {missing})")
    return _filtered(folder, sorted(folder.rglob("*")), None, MODEL_IGNORE_PATTERNS)


def format_listing(files: list[UploadFile]) -> str:
    """One line per file with its size in bytes, then the total."""
    total = sum(f.size for f in files)
    lines = [f"{f.size:>14,}  {f.path}" for f in files]
    lines.append(f"{total:>14,}  total: {len(files)} files, {total / 1e6:.1f} MB")
    return "\n".join(lines)


# -- uploads ----------------------------------------------------------------------------------------
def push_folder(folder: str | Path, repo_id: str, *, private: bool = False, message: str | None = None) -> str:
    """Upload the model folder (weights, config, card, plots, manifest) in a single commit."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                             commit_message=message or "Upload skin-lesion model",
                             ignore_patterns=list(MODEL_IGNORE_PATTERNS))
    return str(getattr(info, "commit_url", info))


def deploy_space(repo_id: str, *, model_id: str | None = None, private: bool = False,
                 root: str | Path = REPO_ROOT) -> str:
    """Create (or update) the Gradio Space `repo_id` from `root` in one commit; returns the Space's URL.

    With `model_id` the Space variable MODEL_ID is set, so the app serves that Hub model (pinned with
    `@REVISION`) and falls back to the shipped weights/ when it cannot load it. Without it an existing
    MODEL_ID variable is left as it is. `private` applies when the Space is created.
    """
    from huggingface_hub import HfApi

    from .constants import MODEL_ID_ENV

    space_files(root)  # the same selection upload_folder makes below; raises when a needed file is missing
    check_can_push(repo_id, what=f"publish space {repo_id}")
    if model_id is not None and check_model_on_hub(model_id):
        logger.warning("%s is private: give the Space a secret HF_TOKEN that can read it", model_id)
    api = HfApi()
    api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    api.upload_folder(repo_id=repo_id, repo_type="space", folder_path=str(root),
                      allow_patterns=list(SPACE_ALLOW_PATTERNS), ignore_patterns=list(SPACE_IGNORE_PATTERNS),
                      # A mirror: files of an earlier deploy that are no longer selected go
                      # (the Hub keeps .gitattributes whatever the pattern).
                      delete_patterns=["*"], commit_message="Deploy the skin-lesion app")
    if model_id is not None:
        api.add_space_variable(repo_id, MODEL_ID_ENV, model_id,
                               description="Hub model the app serves (OWNER/NAME[@REVISION])")
    return f"{HUB_URL}/spaces/{repo_id}"
