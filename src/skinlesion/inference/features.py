"""Penultimate-layer features and logits from ONE forward pass.

timm models split their forward in two: `forward_features` (the backbone, a feature map) and
`forward_head` (pooling, dropout, classifier). With `pre_logits=True` the head stops before the
classifier, so

    features = model.forward_head(model.forward_features(x), pre_logits=True)   # (B, D)
    logits   = model.get_classifier()(features)                                  # (B, K)

gives the classifier's input (what the out-of-distribution detector and the case index use) at no
extra cost. `probe_feature_dim` verifies once per model that this reproduces `model(x)`; an architecture
whose head does more than `classifier(pre_logits)` gets no features (and the features-based
checks are reported as unavailable) instead of wrong ones.

Features come from the identity view only (view 0 of every TTA mode, see `tta.TTA_MODES`), so the
OOD score and the nearest cases do not depend on the TTA choice, and fitting them needs one view.

`taps` (module names such as "blocks.5") append, after the D penultimate values, each tapped module's
output summarised by its spatial mean and standard deviation per channel (2C values), collected by
forward hooks during the same forward. The out-of-distribution detector uses them (Lee et al. 2018's
feature ensemble: a photo of a document differs from dermoscopy in mid-level texture statistics that
the classifier's last layer has learned to ignore); the case index uses the first D values only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

Tensor = torch.Tensor


def split_forward(model: nn.Module, x: Tensor, taps: Sequence[str] = ()) -> tuple[Tensor, Tensor]:
    """(B, 3, H, W) -> ((B, K) logits, (B, D [+ tap statistics]) features), one backbone pass."""
    return split_forward_with_map(model, x, taps)[:2]


def split_forward_with_map(model: nn.Module, x: Tensor, taps: Sequence[str] = ()) -> tuple[Tensor, Tensor, Tensor]:
    """`split_forward` plus the (B, C, h, w) feature map `forward_head` pooled: where a CAM can start
    when the model's CAM target layer outputs that map (`cam.cam_from_map_supported`)."""
    logits, parts, feature_map = forward_parts(model, x, taps)
    return logits, parts[0] if len(parts) == 1 else torch.cat(parts, dim=1), feature_map


def forward_parts(model: nn.Module, x: Tensor, taps: Sequence[str] = ()) -> tuple[Tensor, list[Tensor], Tensor]:
    """(B, 3, H, W) -> ((B, K) logits, [(B, D) penultimate features, (B, 2C) statistics of each tap],
    (B, C, h, w) the map `forward_features` returned)."""
    captured: dict[str, Tensor] = {}

    def keep(name: str):
        def hook(_module, _inputs, output):
            captured[name] = tap_statistics(output)
        return hook

    handles = [tap_module(model, name).register_forward_hook(keep(name)) for name in taps]
    try:
        feature_map = model.forward_features(x)
        pre_logits = model.forward_head(feature_map, pre_logits=True)
    finally:
        for handle in handles:
            handle.remove()
    return model.get_classifier()(pre_logits), [pre_logits] + [captured[name] for name in taps], feature_map


def tap_module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError as err:
        raise FeatureSplitError(f"{type(model).__name__} has no module {name!r} to tap") from err


def tap_statistics(feature_map: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, 2C): per-channel spatial mean, then spatial standard deviation."""
    if feature_map.dim() != 4:
        raise FeatureSplitError(f"a tapped module must output (B, C, H, W), got {tuple(feature_map.shape)}")
    flat = feature_map.float().flatten(2)
    return torch.cat([flat.mean(dim=2), flat.std(dim=2)], dim=1)


class FeatureSplitError(ValueError):
    """This architecture's logits are not `classifier(pre_logits)`, so it has no usable features here."""


def probe_feature_widths(model: nn.Module, input_size: int, *, taps: Sequence[str] = (), atol: float = 1e-4,
                         seed: int = 0) -> list[int]:
    """[D, then 2C per tap]: the width of each part of the features, after checking on a seeded random
    batch that `split_forward` reproduces `model(x)`; raises FeatureSplitError saying why not."""
    needed = ("forward_features", "forward_head", "get_classifier")
    missing = [name for name in needed if not callable(getattr(model, name, None))]
    if missing:
        raise FeatureSplitError(f"{type(model).__name__} has no {', '.join(missing)}")
    x = torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(seed))
    x = x.to(next(model.parameters()).device)
    try:
        with torch.inference_mode():
            logits, parts, _ = forward_parts(model, x, taps)
            reference = model(x)
    except FeatureSplitError:
        raise
    except Exception as err:  # any failure means the split does not apply to this model
        raise FeatureSplitError(f"forward_head(pre_logits=True) failed: {type(err).__name__}: {err}") from err
    if parts[0].dim() != 2:
        raise FeatureSplitError(f"pre-logits features have shape {tuple(parts[0].shape)}, expected (batch, dim)")
    if logits.shape != reference.shape or not torch.allclose(logits.float(), reference.float(), atol=atol, rtol=1e-4):
        raise FeatureSplitError("classifier(pre_logits) does not reproduce the model's logits")
    return [int(part.shape[1]) for part in parts]


def probe_feature_dim(model: nn.Module, input_size: int, *, taps: Sequence[str] = ()) -> int:
    """The whole feature width (D, plus 2C per tap); see `probe_feature_widths`."""
    return sum(probe_feature_widths(model, input_size, taps=taps))


def l2_normalise(x: Tensor, eps: float = 1e-12) -> Tensor:
    return F.normalize(x.float(), dim=-1, eps=eps)


class LogitsAndFeatures(nn.Module):
    """`model` with the outputs (logits, features[, feature map]): what `onnx_export.py` writes to model.onnx."""

    def __init__(self, model: nn.Module, taps: Sequence[str] = (), *, with_map: bool = False):
        super().__init__()
        self.model = model
        self.taps = tuple(taps)
        self.with_map = with_map

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        outputs = split_forward_with_map(self.model, x, self.taps)
        return outputs if self.with_map else outputs[:2]
