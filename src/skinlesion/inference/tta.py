"""Test-time augmentation as a list of reversible views.

Each view has `apply` (image batch -> augmented batch) and `undo` (a spatial map computed on the
augmented batch -> the same map in the original frame). Prediction averages class probabilities over
the views; Grad-CAM computes a map per view, undoes it and averages, so both share this one list.
All views are exact for square inputs (flips and 90-degree rotations lose no pixel).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class View:
    name: str
    apply: Callable[[Tensor], Tensor]   # (..., H, W) -> (..., H, W) (H and W swap for odd rotations)
    undo: Callable[[Tensor], Tensor]    # inverse of apply, on maps of the same layout


def _rot(k: int) -> Callable[[Tensor], Tensor]:
    return lambda x: torch.rot90(x, k, dims=(-2, -1))


IDENTITY = View("identity", lambda x: x, lambda x: x)
HFLIP = View("hflip", lambda x: x.flip(-1), lambda x: x.flip(-1))
VFLIP = View("vflip", lambda x: x.flip(-2), lambda x: x.flip(-2))
HVFLIP = View("hvflip", lambda x: x.flip(-2, -1), lambda x: x.flip(-2, -1))
ROT90 = View("rot90", _rot(1), _rot(-1))
ROT270 = View("rot270", _rot(-1), _rot(1))
TRANSPOSE = View("transpose", lambda x: x.transpose(-2, -1), lambda x: x.transpose(-2, -1))
ANTITRANSPOSE = View("antitranspose", lambda x: torch.rot90(x, 1, (-2, -1)).flip(-1),
                     lambda x: torch.rot90(x.flip(-1), -1, (-2, -1)))

# `full` is the dihedral group D4: every flip and 90-degree rotation of a square, 8 views.
TTA_MODES: dict[str, tuple[View, ...]] = {
    "none": (IDENTITY,),
    "flips": (IDENTITY, HFLIP, VFLIP, HVFLIP),
    "full": (IDENTITY, HFLIP, VFLIP, HVFLIP, ROT90, ROT270, TRANSPOSE, ANTITRANSPOSE),
}


def get_views(mode: str) -> tuple[View, ...]:
    try:
        return TTA_MODES[mode]
    except KeyError as err:
        raise ValueError(f"unknown TTA mode {mode!r}; choose one of {list(TTA_MODES)}") from err


def stack_views(batch: Tensor, views: tuple[View, ...]) -> Tensor:
    """(B, C, H, W) -> (V*B, C, H, W), view-major, for ONE batched forward pass."""
    return torch.cat([v.apply(batch) for v in views], dim=0)


def average_view_probs(probs: Tensor, n_views: int) -> tuple[Tensor, Tensor]:
    """(V*B, K) view-major probabilities -> mean (B, K) and per-view (V, B, K)."""
    per_view = probs.reshape(n_views, -1, probs.shape[-1])
    return per_view.mean(dim=0), per_view


def undo_maps(maps: Tensor, views: tuple[View, ...]) -> Tensor:
    """(V*B, H, W) maps from `stack_views` order -> (V, B, H, W) in the original frame."""
    per_view = maps.reshape(len(views), -1, *maps.shape[-2:])
    return torch.stack([v.undo(m) for v, m in zip(views, per_view, strict=True)], dim=0)


def tta_logits(model: torch.nn.Module, batch: Tensor, views: tuple[View, ...]) -> Tensor:
    """(B, C, H, W) -> (V, B, K) logits from ONE forward pass over all views (the eager path)."""
    logits = model(stack_views(batch, views))
    return logits.reshape(len(views), batch.shape[0], -1)
