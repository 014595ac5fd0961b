"""Class activation maps: one registry of pytorch-grad-cam methods, one place choosing the target layer.

`compute_cam` runs a method on every TTA view of a batch in ONE forward (+ backward) pass, undoes
each view's geometry with `tta.undo_maps` and averages, so the map lives in the frame of the model
input and agrees with the TTA prediction it explains.

Two details matter for a server that also predicts:
- Gradients are needed here even when the caller sits under `torch.inference_mode()`, so grad is
  switched on inside; inference tensors are cloned first (they cannot be saved for backward).
- The target layer's output is detached and made a leaf that requires grad (a "graph cut"). The
  gradient of the class score with respect to that activation is unchanged, but nothing before the
  layer builds an autograd graph and no weight gradient of the backbone is computed: the backward
  pass only runs through the head. All hooks are removed in `finally`, never via the library's
  `with` block, whose `__exit__` prints and swallows IndexError.

Because of that cut, a CAM needs nothing of the backbone but the target layer's activations. When the
target layer outputs the map `forward_features` returns (every CNN family below; not ViT, whose target
sits inside the last block), `compute_cam_from_map` takes that map from the forward that already
predicted (eager or onnxruntime) and runs the library over the head alone, so a request runs the
backbone once. ScoreCAM re-runs the network on masked inputs and always takes the whole model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from pytorch_grad_cam import (
    EigenCAM,
    EigenGradCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from . import tta as tta_views

Tensor = torch.Tensor

# Keyed by lowercase name; every entry works on any family `cam_target` knows.
CAM_METHODS: dict[str, type[BaseCAM]] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "hirescam": HiResCAM,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "eigencam": EigenCAM,
    "eigengradcam": EigenGradCAM,
    "scorecam": ScoreCAM,
}
# Methods that run the network again on perturbed inputs: they need all of it, not the target's activations.
NEEDS_WHOLE_MODEL = frozenset({"scorecam"})


class UnsupportedModelError(ValueError):
    """No CAM target layer is known for this model's family."""


@dataclass(frozen=True)
class CamTarget:
    family: str
    layer: nn.Module
    # Token models: (B, N, C) activations -> (B, C, h, w); built per input size (see `_vit_reshape`).
    reshape_for: Callable[[tuple[int, int]], Callable[[Tensor], Tensor]] | None = None


def get_cam_method(name: str) -> type[BaseCAM]:
    try:
        return CAM_METHODS[name.strip().lower()]
    except KeyError as err:
        raise ValueError(f"unknown CAM method {name!r}; choose one of {sorted(CAM_METHODS)}") from err


def _vit_reshape(model: nn.Module) -> Callable[[tuple[int, int]], Callable[[Tensor], Tensor]]:
    prefix = int(getattr(model, "num_prefix_tokens", 1))

    def for_input(hw: tuple[int, int]) -> Callable[[Tensor], Tensor]:
        embed = model.patch_embed
        grid = embed.dynamic_feat_size(hw) if getattr(model, "dynamic_img_size", False) else embed.grid_size
        h, w = int(grid[0]), int(grid[1])

        def reshape(tokens: Tensor) -> Tensor:
            patches = tokens[:, prefix:, :]  # drop class/distillation/register tokens
            if patches.shape[1] != h * w:
                raise UnsupportedModelError(
                    f"ViT activations have {patches.shape[1]} patch tokens, expected a {h}x{w} grid "
                    f"for a {hw[0]}x{hw[1]} input")
            return patches.reshape(tokens.shape[0], h, w, tokens.shape[2]).permute(0, 3, 1, 2)  # -> (B, C, h, w)

        return reshape

    return for_input


def cam_target(model: nn.Module) -> CamTarget:
    """The layer whose activations a CAM weighs, per model family (the only place this is decided)."""
    from timm.models.convnext import ConvNeXt
    from timm.models.densenet import DenseNet
    from timm.models.efficientnet import EfficientNet
    from timm.models.mobilenetv3 import MobileNetV3
    from timm.models.resnet import ResNet
    from timm.models.vision_transformer import VisionTransformer

    from ..models.architectures import FeatureEnsemble, LesionCNN

    if isinstance(model, FeatureEnsemble):
        # The members' last maps side by side: the gradient of the ensemble's logit weighs every member's
        # channels, so the map explains the combined prediction, not one member's.
        return CamTarget("feature_ensemble", model.fused)
    if isinstance(model, ResNet):
        return CamTarget("resnet", model.layer4[-1])
    if isinstance(model, DenseNet):  # includes our DenseNetSE: norm5 follows the last SE block
        return CamTarget("densenet", model.features.norm5)
    if isinstance(model, MobileNetV3):
        # Its conv_head runs after global pooling (1x1 spatial): a map from there is all zeros.
        return CamTarget("mobilenetv3", model.blocks[-1])
    if isinstance(model, EfficientNet):
        return CamTarget("efficientnet", model.bn2)  # conv_head + BN + activation, last spatial layer
    if isinstance(model, ConvNeXt):
        return CamTarget("convnext", model.stages[-1])
    if isinstance(model, LesionCNN):
        return CamTarget("lesion_cnn", model.stages[-1])
    if isinstance(model, VisionTransformer):  # ViT, DeiT (incl. distilled)
        # norm1 of the last block still carries per-patch tokens that the class token then attends to.
        return CamTarget("vit", model.blocks[-1].norm1, reshape_for=_vit_reshape(model))
    raise UnsupportedModelError(
        f"no CAM target layer is defined for {type(model).__name__}; supported families: ResNet, DenseNet "
        "(incl. densenet201_se), EfficientNet, MobileNetV3, ConvNeXt, ViT/DeiT, lesion_cnn, feature_ensemble. "
        "Add the family to skinlesion.inference.cam.cam_target."
    )


def cut_graph_hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
    """Forward hook: the layer's output becomes a leaf that requires grad, so backward stops here."""
    if not isinstance(output, Tensor):
        raise UnsupportedModelError(f"CAM target layer {type(module).__name__} returned {type(output).__name__}, "
                                    "not a tensor")
    return output.detach().requires_grad_(True)


def normalise_maps(maps: Tensor) -> Tensor:
    """(..., H, W) -> each map min-max scaled to [0, 1]; a constant map becomes all zeros."""
    flat = maps.flatten(-2)
    lo = flat.min(dim=-1, keepdim=True).values
    span = flat.max(dim=-1, keepdim=True).values - lo
    scaled = torch.where(span > 0, (flat - lo) / span.clamp_min(1e-12), torch.zeros_like(flat))
    return scaled.reshape(maps.shape)


def compute_cam(model: nn.Module, x: Tensor, class_index: int | Sequence[int], *, method: str = "gradcam",
                views: tuple[tta_views.View, ...] = (tta_views.IDENTITY,)) -> Tensor:
    """(B, 3, H, W) normalised input -> (B, H, W) float32 maps in [0, 1], in the input's frame.

    `class_index` is one class for the whole batch or one per image; every TTA view of an image
    explains the same class (the final prediction), not each view's own argmax.
    """
    cam_class = get_cam_method(method)
    target = cam_target(model)
    batch = x.shape[0]
    classes = [int(class_index)] * batch if isinstance(class_index, int) else [int(c) for c in class_index]
    if len(classes) != batch:
        raise ValueError(f"got {len(classes)} class indices for a batch of {batch} images")
    reshape = target.reshape_for(tuple(x.shape[-2:])) if target.reshape_for is not None else None
    device = next(model.parameters()).device
    with torch.inference_mode(False), torch.enable_grad():
        stacked = tta_views.stack_views(x.to(device).clone(), views)  # (V*B, 3, H, W), view-major
        targets = [ClassifierOutputTarget(c) for _ in views for c in classes]
        cut = target.layer.register_forward_hook(cut_graph_hook, prepend=True)
        cam = None
        try:
            cam = cam_class(model=model, target_layers=[target.layer], reshape_transform=reshape)
            maps = cam(input_tensor=stacked, targets=targets)  # (V*B, H, W) numpy, each in [0, 1]
        finally:
            cut.remove()
            if cam is not None:
                cam.activations_and_grads.release()
                cam.outputs = None  # the library keeps the last logits (and their graph) alive otherwise
            # The head's weights received gradients; drop them so repeated calls hold no memory.
            model.zero_grad(set_to_none=True)
    per_view = tta_views.undo_maps(torch.from_numpy(np.asarray(maps, dtype=np.float32)), views)  # (V, B, H, W)
    return normalise_maps(per_view.mean(dim=0))


class _HeadFromMap(nn.Module):
    """What runs after `forward_features`, with an identity standing in for the CAM target layer."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.target = nn.Identity()

    def forward(self, feature_map: Tensor) -> Tensor:
        return self.model.forward_head(self.target(feature_map))


def cam_from_map_supported(model: nn.Module, input_size: int) -> bool:
    """Whether the model's CAM target layer outputs exactly the map `forward_features` returns (one small
    forward), so `compute_cam_from_map` gives what `compute_cam` gives."""
    try:
        target = cam_target(model)
    except UnsupportedModelError:
        return False
    if target.reshape_for is not None or not callable(getattr(model, "forward_head", None)):
        return False
    seen: list[Tensor] = []
    handle = target.layer.register_forward_hook(lambda _m, _a, out: seen.append(out))
    try:
        with torch.inference_mode():
            feature_map = model.forward_features(torch.zeros(1, 3, input_size, input_size,
                                                             device=next(model.parameters()).device))
    finally:
        handle.remove()
    return bool(seen) and seen[-1] is feature_map


def compute_cam_from_map(model: nn.Module, feature_map: Tensor, input_hw: tuple[int, int],
                         class_index: int | Sequence[int], *, method: str = "gradcam",
                         views: tuple[tta_views.View, ...] = (tta_views.IDENTITY,)) -> Tensor:
    """(V*B, C, h, w) feature maps of the stacked TTA views (`tta.stack_views` order) -> (B, H, W) float32
    maps in [0, 1] in the input's frame, as `compute_cam` would give them from the images.

    The library computes each map at the feature map's size (its activations and gradients are
    all it reads); they are then scaled to the input with the library's own `scale_cam_image`.
    """
    if method.strip().lower() in NEEDS_WHOLE_MODEL:
        raise ValueError(f"{method} re-runs the network on masked inputs; use compute_cam with the images")
    cam_class = get_cam_method(method)
    batch = feature_map.shape[0] // len(views)
    classes = [int(class_index)] * batch if isinstance(class_index, int) else [int(c) for c in class_index]
    if len(classes) != batch:
        raise ValueError(f"got {len(classes)} class indices for a batch of {batch} images")
    head = _HeadFromMap(model)
    device = next(model.parameters()).device
    with torch.inference_mode(False), torch.enable_grad():
        activations = feature_map.to(device).clone()  # an inference tensor cannot be saved for backward
        targets = [ClassifierOutputTarget(c) for _ in views for c in classes]
        cut = head.target.register_forward_hook(cut_graph_hook, prepend=True)
        cam = None
        try:
            cam = cam_class(model=head, target_layers=[head.target])
            maps = cam(input_tensor=activations, targets=targets)  # (V*B, h, w) numpy, each in [0, 1]
        finally:
            cut.remove()
            if cam is not None:
                cam.activations_and_grads.release()
                cam.outputs = None
            model.zero_grad(set_to_none=True)
    height, width = input_hw
    # As the library finishes a map from the images: scaled to the input size (cv2 bilinear), then
    # min-max normalised again (the resized map need not reach 0 and 1).
    maps = scale_cam_image(scale_cam_image(maps, (width, height)))
    per_view = tta_views.undo_maps(torch.from_numpy(np.asarray(maps, dtype=np.float32)), views)  # (V, B, H, W)
    return normalise_maps(per_view.mean(dim=0))
