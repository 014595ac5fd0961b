"""Where a model's starting weights come from: the Hub (timm's `pretrained=True`) or a local file.

A local file goes through timm's own mechanism, `pretrained_cfg_overlay=dict(file=...)`, so timm
drops and resizes the classifier and keeps the architecture's `pretrained_cfg` (mean/std,
interpolation): nothing here re-implements loading. What timm does not do is check the file before
the run starts, so `check_weights_file` reads only the file's key names and shapes (no tensor is
loaded for safetensors) and compares them with the architecture, naming the first mismatch; and
`weights_provenance` records the file's name and sha256 for config.json and the model card.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import timm

from .architectures import check_model_name

# What the model card says about ImageNet-1k starting weights (the terms of access of the data set).
IMAGENET_LICENCE_NOTE = ("Started from ImageNet-1k weights; ImageNet's terms of access are non-commercial "
                         "research, so use of this model is restricted accordingly.")


class PretrainedWeightsError(ValueError):
    """The starting-weights file is missing, not a state dict, or made for another architecture."""


@dataclass(frozen=True)
class Normalisation:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str


def normalisation_for(architecture: str) -> Normalisation:
    """The mean/std/interpolation the architecture's default ImageNet weights were trained with.

    `tf_efficientnet_lite*` use mean = std = 0.5, most others ImageNet's statistics; a fine-tuned model
    must keep them, so training, evaluation and serving all read them from the model folder.
    """
    check_model_name(architecture)
    cfg = timm.models.get_pretrained_cfg(architecture)
    if cfg is None:
        raise PretrainedWeightsError(f"timm has no pretrained config for {architecture!r}")
    return Normalisation(mean=tuple(float(v) for v in cfg.mean), std=tuple(float(v) for v in cfg.std),
                         interpolation=str(cfg.interpolation or "bicubic"))


def _file_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a state-dict file; safetensors headers only, .pth/.bin read with weights_only."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator
        except (SafetensorError, OSError, ValueError) as err:
            raise PretrainedWeightsError(f"{path}: not a readable safetensors state dict ({err})") from err
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a non-checkpoint; all mean the same here
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise PretrainedWeightsError(f"{path}: not a PyTorch state dict ({type(err).__name__}: {first_line})") from err
    for wrapper in ("state_dict", "model", "state_dict_ema"):  # common checkpoint wrappers, as timm unwraps them
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not state or not all(hasattr(v, "shape") for v in state.values()):
        raise PretrainedWeightsError(f"{path}: not a state dict (expected a mapping of parameter names to tensors)")
    return {k.removeprefix("module."): tuple(v.shape) for k, v in state.items()}


def check_weights_file(path: str | Path, architecture: str) -> None:
    """Raise `PretrainedWeightsError` naming the problem unless `path` holds weights for `architecture`.

    The classifier is exempt (timm resizes it for the number of classes); every other key must exist
    on both sides with the same shape.
    """
    path = Path(path)
    if not path.is_file():
        raise PretrainedWeightsError(f"--pretrained-file {path}: no such file")
    shapes = _file_shapes(path)
    model = timm.create_model(architecture, pretrained=False)
    classifier = model.pretrained_cfg.get("classifier") or "classifier"
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()
                if not any(k == h or k.startswith(h + ".") for h in heads)}
    for key, shape in expected.items():
        if key not in shapes:
            extra = next((k for k in shapes if k not in expected and not k.startswith(heads)), None)
            hint = f"; the file has {extra!r} {shapes[extra]} instead" if extra else ""
            raise PretrainedWeightsError(f"{path} does not fit {architecture}: key {key!r} {shape} is missing{hint}")
        if shapes[key] != shape:
            raise PretrainedWeightsError(f"{path} does not fit {architecture}: key {key!r} has shape {shapes[key]} "
                                         f"in the file, {shape} in the model")
    unexpected = [k for k in shapes if k not in expected and not any(k == h or k.startswith(h + ".") for h in heads)]
    if unexpected:
        raise PretrainedWeightsError(f"{path} does not fit {architecture}: unexpected key {unexpected[0]!r} "
                                     f"{shapes[unexpected[0]]} (and {len(unexpected) - 1} more)")


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def weights_provenance(architecture: str, *, pretrained: bool, pretrained_file: str | None,
                       init_from: str | None) -> dict:
    """What config.json and the card record about where the weights started."""
    if pretrained_file:
        return {"source": "file", "file": Path(pretrained_file).name, "sha256": sha256_of(pretrained_file),
                "architecture": architecture, "licence_note": IMAGENET_LICENCE_NOTE}
    if pretrained:
        tag = timm.models.get_pretrained_cfg(architecture)
        hub_id = getattr(tag, "hf_hub_id", None) or architecture
        return {"source": "hub", "tag": hub_id, "architecture": architecture, "licence_note": IMAGENET_LICENCE_NOTE}
    if init_from:
        return {"source": "init_from", "model": str(init_from)}
    return {"source": "scratch"}
