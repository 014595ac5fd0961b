"""Model creation by name: any timm architecture plus three registered here with timm's registry.

`densenet201_se`, `lesion_cnn` and `feature_ensemble` are registered with `timm.models.register_model`,
so once this module is imported `timm.create_model("lesion_cnn")` and `timm.create_model("local-dir:PATH")`
work for them as for any timm model. `create_model` adds the offline fast-fail for `pretrained=True`.
"""

from __future__ import annotations

from collections import OrderedDict

import timm
import torch
import torch.nn as nn
from timm.layers import SelectAdaptivePool2d, SEModule
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.densenet import DenseNet

from ..constants import DEFAULT_CROP_PCT, DEFAULT_IMAGE_SIZE, DEFAULT_MEAN, DEFAULT_STD
from ..hub import require_hub

# Architectures users compare by name (README table); any other timm name works too.
NAMED_ARCHITECTURES = ("resnet18", "resnet50", "efficientnet_b0", "efficientnet_b3", "densenet121",
                       "densenet201_se", "mobilenetv3_large_100", "lesion_cnn")


class UnknownModelError(ValueError):
    """The model name is neither a timm architecture nor one registered here."""


class DenseNetSE(DenseNet):
    """DenseNet with squeeze-and-excitation channel attention after each dense block.

    The SE modules are inserted as *extra* children of `features` (`se1`..`se4`) so every original
    parameter keeps its name: ImageNet DenseNet weights load as they are, only the SE layers start fresh.
    """

    def __init__(self, *args, se_rd_ratio: float = 1 / 16, **kwargs):
        super().__init__(*args, **kwargs)
        children = OrderedDict()
        channels = None
        for name, module in self.features.named_children():
            children[name] = module
            if name.startswith("denseblock"):
                # A dense block's output width is its input width plus growth per layer; measure it
                # from the last BN of the next stage instead of re-deriving the arithmetic.
                channels = self._block_out_channels(name)
                children[f"se{name.removeprefix('denseblock')}"] = SEModule(channels, rd_ratio=se_rd_ratio)
        self.features = nn.Sequential(children)
        feat_names = [n for n, _ in self.features.named_children()]
        self.feature_ends = [feat_names.index(f["module"].split(".", 1)[1]) for f in self.feature_info]

    def _block_out_channels(self, block_name: str) -> int:
        names = [n for n, _ in self.features.named_children()]
        nxt = getattr(self.features, names[names.index(block_name) + 1])
        norm = next(m for m in nxt.modules() if isinstance(m, nn.BatchNorm2d))
        return norm.num_features


class LesionCNN(nn.Module):
    """Small baseline: four 3x3 conv blocks (64-128-256-512; BN, ReLU, 2x2 max-pool), then FC 512-128-classes.

    Global average pooling before the first FC keeps it input-size agnostic (128 px or 224 px alike).
    Follows timm's model interface (forward_features / forward_head / reset_classifier).
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.3,
                 global_pool: str = "avg", widths: tuple[int, ...] = (64, 128, 256, 512), hidden: int = 128, **_):
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        blocks, c_in = [], in_chans
        self.feature_info = []
        for i, c_out in enumerate(widths):
            blocks.append(nn.Sequential(
                nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=2),
            ))
            self.feature_info.append(dict(num_chs=c_out, reduction=2 ** (i + 1), module=f"stages.{i}"))
            c_in = c_out
        self.stages = nn.Sequential(*blocks)
        self.num_features = c_in
        self.head_hidden_size = hidden  # timm's meaning: the width forward_head(pre_logits=True) returns
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.fc1 = nn.Linear(c_in, hidden)
        self.act = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(drop_rate)
        self.hidden = hidden
        self.fc = nn.Linear(hidden, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.fc = nn.Linear(self.hidden, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)  # (B, 3, H, W) -> (B, 512, H/16, W/16)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.act(self.fc1(self.global_pool(x))))  # (B, 512) -> (B, 128)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class FeatureEnsemble(nn.Module):
    """Several timm backbones on one input: their feature maps concatenated, one linear head.

    Built from trained model folders by `skinlesion.models.ensemble` (never trained as such). The head
    is the members' classifiers side by side, each scaled by weight / temperature, so the logits are
    the weighted sum of the members' calibrated logits, and their softmax the members' geometric-mean
    ensemble. Keeping it ONE model with timm's interface (forward_features -> (B, C, h, w) map,
    forward_head(pre_logits=True) -> (B, D), get_classifier() -> nn.Linear) means everything downstream
    works unchanged: features for the detector and the case index, ONNX export, and Grad-CAM on
    `fused`, the concatenated map, which explains the ensemble's own logit.

    The input arrives normalised with the folder's mean/std (`input_mean`/`input_std`); each member
    is trained on its own normalisation (e.g. 0.5/0.5 for tf_efficientnet_lite*, ImageNet's for
    mobilenetv2), re-applied here by a fixed per-channel affine map.
    """

    def __init__(self, members: list[dict], num_classes: int = 1000, in_chans: int = 3,
                 input_mean: tuple[float, ...] = DEFAULT_MEAN, input_std: tuple[float, ...] = DEFAULT_STD, **_):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two members, got {len(members)}")
        self.backbones = nn.ModuleList(
            timm.create_model(m["architecture"], pretrained=False, num_classes=0, in_chans=in_chans,
                              **m.get("model_args", {}))
            for m in members)
        reductions = {getattr(b, "feature_info", [{}])[-1].get("reduction") for b in self.backbones}
        if len(reductions) > 1:
            raise ValueError(f"ensemble members reduce their input by different factors {sorted(map(str, reductions))}: "
                             "their feature maps cannot be concatenated")
        in_mean, in_std = torch.tensor(input_mean).view(1, -1, 1, 1), torch.tensor(input_std).view(1, -1, 1, 1)
        for i, m in enumerate(members):
            mean, std = torch.tensor(m["mean"]).view(1, -1, 1, 1), torch.tensor(m["std"]).view(1, -1, 1, 1)
            # x_member = (x * in_std + in_mean - mean) / std
            self.register_buffer(f"scale{i}", in_std / std, persistent=False)
            self.register_buffer(f"shift{i}", (in_mean - mean) / std, persistent=False)
        self.map_widths = [int(b.num_features) for b in self.backbones]
        self.num_features = sum(self.map_widths)
        self.head_hidden_size = sum(int(getattr(b, "head_hidden_size", b.num_features)) for b in self.backbones)
        self.fused = nn.Identity()  # the concatenated feature map: the CAM target layer
        self.num_classes = num_classes
        self.head = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        maps = [b.forward_features(x * getattr(self, f"scale{i}") + getattr(self, f"shift{i}"))
                for i, b in enumerate(self.backbones)]
        if len({m.shape[-2:] for m in maps}) > 1:
            raise ValueError(f"ensemble members' feature maps differ in size {[tuple(m.shape[-2:]) for m in maps]}")
        return self.fused(torch.cat(maps, dim=1))  # (B, sum C_i, h, w)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        parts = torch.split(x, self.map_widths, dim=1)
        pooled = torch.cat([b.forward_head(p, pre_logits=True) for b, p in zip(self.backbones, parts, strict=True)],
                           dim=1)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs) -> dict:
    return {"url": "", "num_classes": 1000, "input_size": (3, DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE),
            "pool_size": None, "crop_pct": DEFAULT_CROP_PCT, "interpolation": "bicubic",
            "mean": DEFAULT_MEAN, "std": DEFAULT_STD, "license": "apache-2.0", **kwargs}


default_cfgs = generate_default_cfgs({
    # ImageNet DenseNet-201 weights, with the SE layers initialised fresh (pretrained_strict=False).
    "densenet201_se.tv_in1k": _cfg(hf_hub_id="timm/densenet201.tv_in1k", input_size=(3, 224, 224),
                                   crop_pct=0.875, first_conv="features.conv0", classifier="classifier"),
    "lesion_cnn": _cfg(first_conv="stages.0.0", classifier="fc"),
    "feature_ensemble": _cfg(first_conv="", classifier="head"),
})


@register_model
def densenet201_se(pretrained: bool = False, **kwargs) -> DenseNetSE:
    kwargs.setdefault("growth_rate", 32)
    kwargs.setdefault("block_config", (6, 12, 48, 32))
    return build_model_with_cfg(DenseNetSE, "densenet201_se", pretrained, pretrained_strict=False,
                                feature_cfg=dict(flatten_sequential=True), **kwargs)


@register_model
def lesion_cnn(pretrained: bool = False, **kwargs) -> LesionCNN:
    return build_model_with_cfg(LesionCNN, "lesion_cnn", pretrained, feature_cfg=dict(flatten_sequential=True),
                                **kwargs)


@register_model
def feature_ensemble(pretrained: bool = False, **kwargs) -> FeatureEnsemble:
    # pretrained=True only ever means "this folder's own weights" (local-dir:/hf-hub: loading): there are
    # no ImageNet weights of an ensemble.
    return build_model_with_cfg(FeatureEnsemble, "feature_ensemble", pretrained, **kwargs)


def check_model_name(name: str) -> None:
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:8]
        hint = f" Similar names: {', '.join(close)}." if close else ""
        raise UnknownModelError(f"unknown model {name!r}: not a timm architecture nor one of ours.{hint}")


def create_model(name: str, num_classes: int, *, pretrained: bool = False, pretrained_file: str | None = None,
                 drop_rate: float = 0.0, **kwargs) -> nn.Module:
    """A timm model by name with a fresh `num_classes` head.

    `pretrained` loads the architecture's ImageNet weights from the Hub; `pretrained_file` loads them
    from a local state dict through timm's own `pretrained_cfg_overlay=dict(file=...)` (no network;
    timm drops the 1000-class head). Check the file first with `pretrained.check_weights_file`.
    """
    check_model_name(name)
    if pretrained_file:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(pretrained_file)),
                                 num_classes=num_classes, drop_rate=drop_rate, **kwargs)
    if pretrained:
        # Without this, an offline machine waits on huggingface_hub's retries before failing.
        require_hub(f"ImageNet weights for {name!r} (--pretrained)")
    return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, drop_rate=drop_rate, **kwargs)
