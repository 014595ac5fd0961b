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
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import tta as tta_views

Tensor = torch.Tensor


def split_forward(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """(B, 3, H, W) -> ((B, K) logits, (B, D) penultimate features), one backbone pass."""
    features = model.forward_head(model.forward_features(x), pre_logits=True)
    return model.get_classifier()(features), features


class FeatureSplitError(ValueError):
    """This architecture's logits are not `classifier(pre_logits)`, so it has no usable features here."""


def probe_feature_dim(model: nn.Module, input_size: int, *, atol: float = 1e-4, seed: int = 0) -> int:
    """The feature dimension D, after checking on a seeded random batch that `split_forward`
    reproduces `model(x)`; raises FeatureSplitError saying why not."""
    needed = ("forward_features", "forward_head", "get_classifier")
    missing = [name for name in needed if not callable(getattr(model, name, None))]
    if missing:
        raise FeatureSplitError(f"{type(model).__name__} has no {', '.join(missing)}")
    x = torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(seed))
    x = x.to(next(model.parameters()).device)
    try:
        with torch.inference_mode():
            logits, features = split_forward(model, x)
            reference = model(x)
    except Exception as err:  # any failure means the split does not apply to this model
        raise FeatureSplitError(f"forward_head(pre_logits=True) failed: {type(err).__name__}: {err}") from err
    if features.dim() != 2:
        raise FeatureSplitError(f"pre-logits features have shape {tuple(features.shape)}, expected (batch, dim)")
    if logits.shape != reference.shape or not torch.allclose(logits.float(), reference.float(), atol=atol, rtol=1e-4):
        raise FeatureSplitError("classifier(pre_logits) does not reproduce the model's logits")
    return int(features.shape[1])


def tta_logits_and_features(model: nn.Module, batch: Tensor, views: tuple[tta_views.View, ...]) -> tuple[Tensor, Tensor]:
    """(B, C, H, W) -> ((V, B, K) logits, (B, D) identity-view features) from ONE forward over all views."""
    if views[0] is not tta_views.IDENTITY:
        raise ValueError(f"the first TTA view must be the identity, got {views[0].name!r}")
    logits, features = split_forward(model, tta_views.stack_views(batch, views))  # (V*B, K), (V*B, D)
    n = batch.shape[0]
    return logits.reshape(len(views), n, -1), features[:n]


def l2_normalise(x: Tensor, eps: float = 1e-12) -> Tensor:
    return F.normalize(x.float(), dim=-1, eps=eps)


class LogitsAndFeatures(nn.Module):
    """`model` with two outputs, (logits, features): what `export.py` writes to model.onnx."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return split_forward(self.model, x)
