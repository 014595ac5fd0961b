"""Which forward serves a Predictor, chosen once at load: the fastest correct variant this machine offers.

`VARIANTS`, fastest first (measured on the shipped ensemble, docs/speed.md "Inference variants"):
- `onnxruntime`: the folder's model.onnx, when onnxruntime is installed, the device is the CPU, and the
  file was exported from these weights with these taps (`onnx_runtime.open_onnx`, `onnx_mismatch`);
- `channels_last`: PyTorch with the model and its input in `channels_last`, under `inference_mode`;
- `eager`: PyTorch in the default memory format, exactly as the model was loaded: the reference every
  other variant is tested against (tests/test_inference_variants.py) and benchmarked against.
`auto` takes the first this folder allows; a model.onnx that does not serve the folder is passed over
for PyTorch with a logged reason (`ModelForward.note`), or raises when onnxruntime was asked for by name.
Every variant returns the same logits, features and feature map within float tolerance.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import torch
import torch.nn as nn

from ..models.folder import ModelFolderError
from . import features as feature_split
from .onnx_runtime import OnnxForward, OnnxUnavailableError, onnx_mismatch

logger = logging.getLogger(__name__)

VARIANTS = ("onnxruntime", "channels_last", "eager")
AUTO = "auto"


def requested_variant(variant: str = AUTO, use_onnx: bool | None = None) -> str:
    """`variant` (AUTO or one of VARIANTS), with the older `use_onnx` switch folded in:
    True = onnxruntime, False = the fastest PyTorch variant."""
    if variant != AUTO and variant not in VARIANTS:
        raise ValueError(f"unknown inference variant {variant!r}; choose {AUTO} or one of {list(VARIANTS)}")
    if use_onnx is None:
        return variant
    wanted = "onnxruntime" if use_onnx else "channels_last"
    if variant not in (AUTO, wanted) and not (variant == "eager" and not use_onnx):
        raise ValueError(f"use_onnx={use_onnx} contradicts variant={variant!r}")
    return wanted if variant == AUTO else variant


class ModelForward:
    """(N, 3, S, S) views -> ((N, K) float logits, (N, D) float CPU features or None, (N, C, h, w) feature
    map or None) on one variant. `lock` serialises PyTorch forwards: tap and CAM hooks live on the shared
    module, and app events run in threads."""

    def __init__(self, model: nn.Module, *, variant: str, device: torch.device, taps: Sequence[str],
                 features: bool, onnx: OnnxForward | None = None, note: str | None = None):
        self.model, self.variant, self.device, self.taps = model, variant, device, tuple(taps)
        self.features = features and (onnx is None or onnx.has_features)
        self.onnx = onnx
        self.note = note  # why a faster variant was passed over (None when the fastest serves)
        self.lock = threading.Lock()
        self.memory_format = torch.contiguous_format if variant == "eager" else torch.channels_last
        if variant != "eager":
            # channels_last: 1.6x the default format for the shipped ensemble on this CPU (docs/speed.md).
            # Nothing here trains, so no parameter needs a gradient: a CAM's backward starts at its cut
            # (cam.py) and the backbone's forward records no graph. `eager` keeps the model as loaded.
            model.to(memory_format=torch.channels_last).requires_grad_(False)

    @property
    def has_map(self) -> bool:
        """Whether the forward can also return the feature map (a model.onnx exported before it could not)."""
        return self.onnx is None or self.onnx.has_map

    def __call__(self, stacked: torch.Tensor, *, with_map: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        if self.onnx is not None:
            logits, feats, feature_map = self.onnx.run(stacked, with_map=with_map)
            return logits.float(), (feats.float() if feats is not None else None), feature_map
        x = stacked.to(self.device, memory_format=self.memory_format)
        with torch.inference_mode(), self.lock:
            if not self.features:
                return self.model(x).float(), None, None
            logits, feats, feature_map = feature_split.split_forward_with_map(self.model, x, self.taps)
            return logits.float(), feats.float().cpu(), (feature_map if with_map else None)


def choose(model: nn.Module, requested: str, *, device: torch.device, taps: Sequence[str], features: bool,
           feature_width: int | None, needs_features: bool, onnx: OnnxForward | None = None,
           note: str | None = None) -> ModelForward:
    """The forward for `requested` (AUTO or one of VARIANTS). `onnx`: the folder's opened model.onnx (or None,
    with `note` saying why); it serves only when its outputs are what PyTorch would give this folder."""
    requested_variant(requested)
    if requested in (AUTO, "onnxruntime") and onnx is not None:
        mismatch = onnx_mismatch(onnx, taps=taps, feature_width=feature_width, needs_features=needs_features)
        if mismatch is not None:
            if requested == "onnxruntime":
                raise ModelFolderError(f"{mismatch}, or run PyTorch (variant='channels_last')")
            logger.warning("running PyTorch, not onnxruntime: %s", mismatch)
            onnx, note = None, mismatch
    elif requested == "onnxruntime":
        raise OnnxUnavailableError(note or "variant='onnxruntime' needs the folder's model.onnx opened "
                                   "(Predictor.from_pretrained opens it)")
    variant = "onnxruntime" if onnx is not None else ("eager" if requested == "eager" else "channels_last")
    return ModelForward(model, variant=variant, device=device, taps=taps, features=features, onnx=onnx,
                        note=None if onnx is not None else note)
