"""The model folder: the unit that training writes and everything else loads.

Layout (Hub conventions, so `timm.create_model("local-dir:PATH")` and `hf-hub:` loading work):
  model.safetensors   weights (never pickles)
  config.json         timm's format: architecture, num_classes, label_names, label_descriptions,
                      pretrained_cfg (input size, mean/std, crop, interpolation), model_args, plus
                      our own "skinlesion" section (TTA, temperature, OOD threshold, training config,
                      split manifest hash, validation metrics)
  README.md           model card
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..constants import MODEL_CONFIG_FILE, MODEL_WEIGHTS_FILE
from ..data.transforms import Preprocessing
from ..hub import HubUnavailableError, hub_offline_mode, looks_like_hub_id, require_hub
from ..taxonomy import describe_label
from . import architectures  # importing it registers our architectures with timm

FORMAT_VERSION = 1
SECTION = "skinlesion"
# Fitted on the model's penultimate-layer features after training (`skinlesion fit-features`):
# out-of-distribution statistics (inference/ood.py) and the similar-cases index (inference/cases.py).
OOD_STATS_FILE = "ood_stats.safetensors"
CASE_INDEX_FILE = "case_index.safetensors"
CASE_THUMBNAILS_FILE = "case_thumbnails.safetensors"  # small pictures of the indexed training images
# Config entries that describe those files: fitted for one preprocessing and one set of weights.
FEATURE_EXTRAS = ("ood_detector", "case_index")


class ModelFolderError(ValueError):
    """A model folder is missing files or does not match itself (config vs weights)."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    architecture: str
    label_names: list[str]
    preprocessing: Preprocessing
    extras: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def temperature(self) -> float:
        return float(self.extras.get("temperature", 1.0))

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


def build_config(architecture: str, label_names: list[str], preprocessing: Preprocessing,
                 model_args: dict | None = None, extras: dict | None = None, num_features: int | None = None) -> dict:
    return {
        "architecture": architecture,
        "num_classes": len(label_names),
        "num_features": num_features,
        "label_names": list(label_names),
        "label_descriptions": {n: describe_label(n).name for n in label_names},
        "pretrained_cfg": {**preprocessing.to_timm(), "num_classes": len(label_names)},
        "model_args": dict(model_args or {}),
        # Not inside pretrained_cfg: timm's PretrainedCfg rejects unknown keys, which would break
        # `timm.create_model("local-dir:...", pretrained=True)` and hf-hub: loading.
        SECTION: {"format_version": FORMAT_VERSION, "color_constancy": preprocessing.color_constancy,
                  "fov_crop": preprocessing.fov_crop, **(extras or {})},
    }


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def save_model_folder(folder: str | Path, model: torch.nn.Module, *, architecture: str, label_names: list[str],
                      preprocessing: Preprocessing, model_args: dict | None = None, extras: dict | None = None,
                      card: str | None = None) -> Path:
    """Write weights + config (+ card) into `folder`, each file replaced atomically."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".model.", suffix=".safetensors")
    os.close(fd)
    save_file(state, tmp, metadata={"format": "pt"})
    os.replace(tmp, folder / MODEL_WEIGHTS_FILE)
    config = build_config(architecture, label_names, preprocessing, model_args, extras,
                          num_features=getattr(model, "num_features", None))
    _atomic_write_text(folder / MODEL_CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    if card is not None:
        _atomic_write_text(folder / "README.md", card)
    return folder


def save_safetensors_within(path: Path, tensors: dict, metadata: dict[str, str], *, max_bytes: int,
                            over_budget: Callable[[int], Exception]) -> Path:
    """Write a safetensors file atomically, refusing (with `over_budget(size)`) one larger than `max_bytes`:
    the side files a Space downloads (case index, thumbnails) have a size budget, and a refused file must not
    replace the one that was there."""
    from safetensors.torch import save_file

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".safetensors")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        size = Path(tmp).stat().st_size
        if size > max_bytes:
            raise over_budget(size)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def update_extras(folder: str | Path, **updates: Any) -> dict:
    """Merge `updates` into the config's skinlesion section (e.g. a fitted temperature)."""
    path = Path(folder) / MODEL_CONFIG_FILE
    config = json.loads(path.read_text())
    config.setdefault(SECTION, {}).update(updates)
    _atomic_write_text(path, json.dumps(config, indent=2) + "\n")
    return config


def set_preprocessing(folder: str | Path, preprocessing: Preprocessing) -> dict:
    """Replace the folder's preprocessing (e.g. a test resolution chosen on the validation split).

    A temperature fitted under the old preprocessing no longer applies, so it is reset to 1 and the
    calibration record dropped: refit with `evaluate.py --fit-temperature`. The OOD statistics and
    the case index (features of the old input) are dropped too: rebuild with `skinlesion fit-features`.
    """
    path = Path(folder) / MODEL_CONFIG_FILE
    config = json.loads(path.read_text())
    config["pretrained_cfg"] = {**config["pretrained_cfg"], **preprocessing.to_timm()}
    extras = config.setdefault(SECTION, {})
    extras["color_constancy"] = preprocessing.color_constancy
    extras["fov_crop"] = preprocessing.fov_crop
    extras["temperature"] = 1.0
    for stale in ("calibration", "ood", *FEATURE_EXTRAS):
        extras.pop(stale, None)
    _atomic_write_text(path, json.dumps(config, indent=2) + "\n")
    return config


def resolve_folder(source: str | Path, revision: str | None = None) -> Path:
    """A local folder as is; a Hub id downloaded (or taken from cache) with its revision pinned."""
    path = Path(str(source).removeprefix("local-dir:"))
    if path.is_dir():
        return path
    name = str(source)
    if not looks_like_hub_id(name):
        raise ModelFolderError(f"{source}: no such model folder (and not a Hub id of the form owner/name)")
    from huggingface_hub import snapshot_download

    repo_id = name.removeprefix("hf-hub:")
    patterns = [MODEL_WEIGHTS_FILE, MODEL_CONFIG_FILE, OOD_STATS_FILE, CASE_INDEX_FILE,
                CASE_THUMBNAILS_FILE, "README.md", "*.png",
                "*.csv", "*.onnx"]
    try:
        # The cache answers instantly when the revision was downloaded before, online or not.
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=True))
    except Exception:  # noqa: BLE001 - any cache miss means we must go online
        pass
    if hub_offline_mode():
        raise HubUnavailableError(f"model {repo_id!r} is not in the local cache and HF_HUB_OFFLINE=1 is set")
    require_hub(f"model {repo_id!r}")
    return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))


def read_config(folder: Path) -> dict:
    cfg_path = folder / MODEL_CONFIG_FILE
    if not cfg_path.is_file():
        raise ModelFolderError(f"{folder}: no {MODEL_CONFIG_FILE} (is this a model folder?)")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise ModelFolderError(f"{cfg_path}: not valid JSON ({err})") from err
    for key in ("architecture", "num_classes", "pretrained_cfg"):
        if key not in config:
            raise ModelFolderError(f"{cfg_path}: missing key {key!r}")
    labels = config.get("label_names") or config["pretrained_cfg"].get("label_names")
    if not labels or len(labels) != config["num_classes"]:
        raise ModelFolderError(
            f"{cfg_path}: label_names ({len(labels or [])}) must list num_classes ({config['num_classes']}) labels"
        )
    return config


def load_model_folder(source: str | Path, *, revision: str | None = None, device: str | torch.device | None = None) -> LoadedModel:
    """Rebuild the model and its preprocessing from a folder or Hub id alone; weights must match exactly."""
    import timm

    folder = resolve_folder(source, revision)
    config = read_config(folder)
    weights = folder / MODEL_WEIGHTS_FILE
    if not weights.is_file():
        hint = " (pickled .bin/.pth weights are never loaded: convert them to safetensors)" if any(
            (folder / n).exists() for n in ("pytorch_model.bin", "model.pth", "model.pt")) else ""
        raise ModelFolderError(f"{folder}: no {MODEL_WEIGHTS_FILE}{hint}")
    arch = config["architecture"]
    try:
        architectures.check_model_name(arch)
    except architectures.UnknownModelError as err:
        raise ModelFolderError(f"{folder}: {err}") from err
    model = timm.create_model(arch, pretrained=False, num_classes=config["num_classes"],
                              **config.get("model_args", {}))
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError) as err:
        raise ModelFolderError(f"{weights}: unreadable safetensors file ({err})") from err
    # Shapes first: load_state_dict raises a bare RuntimeError on a size mismatch, even with strict=False.
    for name, param in model.state_dict().items():
        if name in state and param.shape != state[name].shape:
            raise ModelFolderError(
                f"{folder}: weights do not match config.json ({arch!r}, model_args {config.get('model_args', {})}): "
                f"{name} has shape {tuple(state[name].shape)}, the model expects {tuple(param.shape)}")
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ModelFolderError(
            f"{folder}: weights do not match architecture {arch!r} with {config['num_classes']} classes "
            f"(missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})"
        )
    model.eval()
    if device is not None:
        model.to(device)
    labels = config.get("label_names") or config["pretrained_cfg"]["label_names"]
    extras = dict(config.get(SECTION, {}))
    return LoadedModel(model=model, architecture=arch, label_names=list(labels),
                       preprocessing=Preprocessing.from_timm(config["pretrained_cfg"],
                                                             extras.get("color_constancy", "none"),
                                                             extras.get("fov_crop", False)),
                       extras=extras, source=str(source))


def copy_folder(src: str | Path, dst: str | Path) -> None:
    shutil.copytree(src, dst, dirs_exist_ok=True)


def file_sha256(path: Path) -> str:
    """The sha256 of a file (model.safetensors's identifies the weights that OOD statistics, the case index
    and model.onnx were made from)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
