"""The one typed training configuration: built once from the CLI (and an optional YAML/JSON recipe),
passed down explicitly, and saved into every checkpoint and model folder that it produced."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..constants import COLOR_CONSTANCY, DEFAULT_CROP_PCT, DEFAULT_IMAGE_SIZE, DEFAULT_INTERPOLATION

LOSSES = ("ce", "weighted_ce", "focal", "logit_adjusted")
SAMPLINGS = ("plain", "balanced")
PRECISIONS = ("auto", "no", "bf16", "fp16")
TTA_MODES = ("none", "flips", "full")
SELECTIONS = ("worst_source", "pooled")  # names of skinlesion.inference.tta.TTA_MODES (kept here so config needs no torch)


@dataclass(frozen=True)
class TrainConfig:
    # --- data
    # One or more sources, each `PATH[,name=N][,layout=L][,split=S]` (data/sources.py): dataset folder, CSV,
    # saved HF dataset or Hub dataset id. Trained as one table; each keeps its own layout and official split.
    data: tuple[str, ...] = ()
    layout: str | None = None            # default layout for sources that do not name one (auto-detect)
    label_map: str | None = None         # "common_nevus=nv,melanoma=mel"
    manifest: str | None = None          # split manifest (image_id,split); made and saved when absent
    val_fraction: float = 0.1            # used only when making the split
    test_fraction: float = 0.1
    duplicates: str | None = None        # extra same-lesion pairs; default: duplicate_lesion_pairs.csv beside data
    skip_bad: bool = False               # skip (and count) unreadable images / unknown labels instead of failing
    # Held-out test folders (e.g. ISIC2017_test) never trained on: read only so that a training image that
    # duplicates one of them is left out (and counted), as one duplicating a val/test image is.
    holdout: tuple[str, ...] = ()
    # Near-duplicate screen (data/near_duplicates.py): max Hamming distance of the 256-bit perceptual hash at which
    # two images count as one photograph. 0 switches the screen off.
    duplicate_distance: int = 40
    # Best epoch: "worst_source" = the lowest per-source validation balanced accuracy (a model cannot win on one
    # clinic while losing another; docs/training.md), "pooled" = balanced accuracy of all validation images.
    selection: str = "worst_source"
    # --- model
    model: str = "resnet18"              # any timm name, or densenet201_se / lesion_cnn
    pretrained: bool = False             # ImageNet weights from the Hub (timm's default tag for `model`)
    # ImageNet weights from a local timm state dict instead (.safetensors/.pth), loaded through timm's
    # pretrained_cfg_overlay=dict(file=...): no network, head resized by timm, mean/std follow the weights.
    pretrained_file: str | None = None
    init_from: str | None = None         # fine-tune from one of our model folders or a Hub id
    drop_rate: float = 0.2               # dropout before the classifier
    model_args: dict = field(default_factory=dict)  # extra timm kwargs, e.g. {"drop_path_rate": 0.05}
    # --- preprocessing and augmentation
    image_size: int = DEFAULT_IMAGE_SIZE
    crop_pct: float = DEFAULT_CROP_PCT
    interpolation: str = DEFAULT_INTERPOLATION
    color_constancy: str = "none"        # none or shades_of_gray (stored in the model folder, applied at inference)
    fov_crop: bool = False               # crop to a dermatoscope's field of view when the photo shows its black surround
    scale_min: float = 0.35              # RandomResizedCrop lower area bound
    max_aspect: float = 4 / 3            # RandomResizedCrop aspect range (1/max_aspect, max_aspect): squashed images
    zoom_out: float = 0.0                # probability of a zoom-out onto a black canvas (wider field of view)
    aperture: float = 0.0                # probability of a random circular dermatoscope field of view (black outside)
    channel_gain: float = 0.0            # per-channel gain jitter +-x (another illuminant / white balance)
    rotate_degrees: float = 0.0          # arbitrary-angle rotation before the crop; 90-degree turns are always on
    color_jitter: float = 0.2
    rand_augment: bool = False
    random_erasing: float = 0.0
    # --- optimisation
    epochs: int = 30
    batch_size: int = 64                 # per process
    lr: float = 2e-3                     # peak AdamW learning rate (for batch_size x processes x grad_accum)
    weight_decay: float = 0.05
    # timm's layer-wise learning-rate decay: the head trains at lr, each earlier layer group at lr * decay^depth,
    # so fine-tuning moves ImageNet features less than the fresh head. None = one lr for all.
    layer_decay: float | None = None
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01           # cosine floor as a fraction of lr
    grad_clip: float = 1.0               # max grad norm; 0 disables
    grad_accum: int = 1
    loss: str = "focal"                  # ce (with label smoothing), weighted_ce, focal, logit_adjusted
    logit_adjust_tau: float = 1.0        # logit_adjusted: strength of the log-prior offset (1 = Bayes-balanced)
    label_smoothing: float = 0.1         # for ce / weighted_ce
    focal_gamma: float = 2.0
    sampling: str = "plain"              # plain or balanced (class-balanced sampler)
    sampling_power: float = 1.0          # balanced: weight each image by count**-power (1 = equal classes, 0.5 = square root)
    ema: bool = True                     # keep an exponential moving average of weights; evaluate and ship it
    ema_decay: float = 0.998
    mixed_precision: str = "auto"        # auto = bf16 on GPUs that support it, fp16 on other GPUs, off on CPU
    channels_last: bool = True
    # --- run
    seed: int = 0
    # DataLoader workers per process. On the 2-core box (bench_train, quiet machine) 2 kept the loop within
    # 10% of the bare step for resnet18 / efficientnet_b0 / mobilenetv3; 1 was 4-5 points lower for the
    # last two. Never 0 on a busy machine: the augmentations then run on the main process's thread pool.
    workers: int = 2
    output_dir: str = "runs/default"
    resume: bool = False
    early_stopping: int = 10             # epochs without val balanced-accuracy gain; 0 disables
    checkpoint_minutes: float = 10.0     # also checkpoint mid-epoch this often, so a kill loses little
    limit_train_batches: int = 0         # >0: stop each epoch early (smoke tests, benchmarks)
    tta: str = "flips"                   # default TTA stored in the model folder for the Predictor
    push_to_hub: str | None = None       # repo id to upload the finished model folder to
    hub_private: bool = False
    progress: bool = True                # tqdm bars on the main process

    def __post_init__(self) -> None:
        # Recipes and configs saved before several sources existed hold one path as a string.
        for name in ("data", "holdout"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, (value,) if value else ())
            elif not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        problems = []
        if self.selection not in SELECTIONS:
            problems.append(f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        if self.duplicate_distance < 0:
            problems.append(f"duplicate_distance must not be negative, got {self.duplicate_distance}")
        if self.loss not in LOSSES:
            problems.append(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.sampling not in SAMPLINGS:
            problems.append(f"sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if not 0.0 < self.sampling_power <= 1.0:
            problems.append(f"sampling_power must be in (0, 1], got {self.sampling_power}")
        if self.logit_adjust_tau < 0:
            problems.append(f"logit_adjust_tau must not be negative, got {self.logit_adjust_tau}")
        if self.tta not in TTA_MODES:
            problems.append(f"tta must be one of {TTA_MODES}, got {self.tta!r}")
        if self.mixed_precision not in PRECISIONS:
            problems.append(f"mixed_precision must be one of {PRECISIONS}, got {self.mixed_precision!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.grad_accum < 1:
            problems.append("epochs, batch_size and grad_accum must be at least 1")
        if not 16 <= self.image_size <= 1024:
            problems.append(f"image_size {self.image_size} is outside 16..1024")
        if self.color_constancy not in COLOR_CONSTANCY:
            problems.append(f"color_constancy must be one of {COLOR_CONSTANCY}, got {self.color_constancy!r}")
        if not 0 < self.crop_pct <= 1:
            problems.append(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.pretrained and self.pretrained_file:
            problems.append("pretrained (Hub weights) and pretrained_file (a local file) exclude each other")
        if (self.pretrained or self.pretrained_file) and self.init_from:
            problems.append("init_from starts from one of our folders; it excludes pretrained / pretrained_file")
        if self.model == "feature_ensemble" and not self.init_from:
            problems.append("feature_ensemble is built from trained model folders (`skinlesion ensemble --member A "
                            "--member B --out C`), not trained from scratch; to fine-tune one, pass --init-from C")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            problems.append(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.lr <= 0:
            problems.append("lr must be positive")
        if not 0 < self.scale_min <= 1:
            problems.append(f"scale_min must be in (0, 1], got {self.scale_min}")
        if self.max_aspect < 1 or not 0 <= self.zoom_out <= 1:
            problems.append(f"max_aspect must be >= 1 and zoom_out in [0, 1]; got {self.max_aspect}, {self.zoom_out}")
        if not 0 <= self.aperture <= 1 or not 0 <= self.channel_gain < 1:
            problems.append(f"aperture must be in [0, 1] and channel_gain in [0, 1); got {self.aperture}, {self.channel_gain}")
        if self.aperture > 0 and self.fov_crop:
            # FovCrop comes first in training and evaluation, so it would never see the circles the augmentation
            # draws afterwards: the model would train on surrounds it is never served.
            problems.append("aperture augmentation and fov_crop exclude each other (the crop removes what the "
                            "augmentation teaches); use one")
        if self.color_jitter < 0 or self.weight_decay < 0 or self.workers < 0:
            problems.append("color_jitter, weight_decay and workers must not be negative")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}")
        return cls(**values)


def load_recipe(path: str | Path) -> dict[str, Any]:
    """A saved recipe: YAML or JSON mapping of TrainConfig fields (dashes or underscores)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        values = yaml.safe_load(text) or {}
    else:
        values = json.loads(text)
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a recipe must be a mapping of config keys")
    return {k.replace("-", "_"): v for k, v in values.items()}


def build_parser() -> argparse.ArgumentParser:
    """argparse in groups; every default is None so a recipe file can fill what the CLI leaves unset."""
    p = argparse.ArgumentParser(description="Train a skin-lesion classifier (accelerate launch train.py ...).")
    p.add_argument("--config", default=None, help="YAML/JSON recipe with TrainConfig fields; CLI flags override it")
    bool_flag = argparse.BooleanOptionalAction

    g = p.add_argument_group("data")
    g.add_argument("--data", nargs="+", action="extend", metavar="SOURCE",
                   help="one or more sources, each PATH[,name=N][,layout=L][,split=train|val|test]: dataset folder, "
                        "CSV, saved HF dataset or Hub dataset id (e.g. --data ../HAM10000 ../ISIC2017_train "
                        "../ISIC2017_val)")
    g.add_argument("--layout", help="layout for sources that do not name one (ham10000, isic2017/2018/2019, "
                                    "imagefolder, hf); auto-detected otherwise")
    g.add_argument("--label-map", help="rename labels: SRC=DST,...")
    g.add_argument("--manifest", help="split manifest CSV (image_id,split); made and saved when absent")
    g.add_argument("--val-fraction", type=float)
    g.add_argument("--test-fraction", type=float)
    g.add_argument("--duplicates", help="CSV of image pairs showing the same lesion")
    g.add_argument("--holdout", nargs="+", action="extend", metavar="SOURCE",
                   help="held-out test folder(s) never trained on; training images duplicating them are left out")
    g.add_argument("--duplicate-distance", type=int,
                   help="near-duplicate screen: max Hamming distance of the 256-bit image hash (0 = off; default 40)")
    g.add_argument("--selection", choices=SELECTIONS,
                   help="best epoch by the worst source's validation balanced accuracy (default) or the pooled one")
    g.add_argument("--skip-bad", action=bool_flag, default=None)

    g = p.add_argument_group("model")
    g.add_argument("--model", help="timm model name, densenet201_se or lesion_cnn")
    g.add_argument("--pretrained", action=bool_flag, default=None, help="start from ImageNet weights (needs the Hub)")
    g.add_argument("--pretrained-file", metavar="PATH",
                   help="start from ImageNet weights in a local timm state dict (.safetensors/.pth); works offline")
    g.add_argument("--init-from", help="fine-tune from a model folder or Hub id of ours")
    g.add_argument("--drop-rate", type=float)

    g = p.add_argument_group("preprocessing and augmentation")
    g.add_argument("--image-size", type=int)
    g.add_argument("--crop-pct", type=float)
    g.add_argument("--color-constancy", choices=COLOR_CONSTANCY)
    g.add_argument("--fov-crop", action=bool_flag, default=None,
                   help="crop to a dermatoscope's field of view first (stored in the model folder)")
    g.add_argument("--scale-min", type=float)
    g.add_argument("--max-aspect", type=float, help="crop aspect range 1/x..x (4/3 default)")
    g.add_argument("--zoom-out", type=float, help="probability of a zoom-out onto a black canvas")
    g.add_argument("--aperture", type=float, help="probability of a random circular field of view (black outside)")
    g.add_argument("--channel-gain", type=float, help="per-channel gain jitter +-x (white balance)")
    g.add_argument("--rotate-degrees", type=float)
    g.add_argument("--color-jitter", type=float)
    g.add_argument("--rand-augment", action=bool_flag, default=None)
    g.add_argument("--random-erasing", type=float)

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--layer-decay", type=float, help="layer-wise lr decay (e.g. 0.75): lower lr for earlier layers")
    g.add_argument("--warmup-epochs", type=float)
    g.add_argument("--grad-clip", type=float)
    g.add_argument("--grad-accum", type=int)
    g.add_argument("--loss", choices=LOSSES)
    g.add_argument("--logit-adjust-tau", type=float)
    g.add_argument("--label-smoothing", type=float)
    g.add_argument("--focal-gamma", type=float)
    g.add_argument("--sampling", choices=SAMPLINGS)
    g.add_argument("--sampling-power", type=float)
    g.add_argument("--ema", action=bool_flag, default=None)
    g.add_argument("--ema-decay", type=float)
    g.add_argument("--mixed-precision", choices=PRECISIONS)
    g.add_argument("--channels-last", action=bool_flag, default=None)

    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int)
    g.add_argument("--workers", type=int)
    g.add_argument("--output-dir")
    g.add_argument("--resume", action=bool_flag, default=None, help="continue from the output folder's last checkpoint")
    g.add_argument("--early-stopping", type=int)
    g.add_argument("--checkpoint-minutes", type=float)
    g.add_argument("--limit-train-batches", type=int)
    g.add_argument("--tta", choices=TTA_MODES)
    g.add_argument("--progress", action=bool_flag, default=None)

    g = p.add_argument_group("hub")
    g.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the finished model folder (rank 0, one commit)")
    g.add_argument("--hub-private", action=bool_flag, default=None)

    g = p.add_argument_group("hyper-parameter search")
    g.add_argument("--tune", type=int, default=0, metavar="N", help="run N Optuna trials instead of one training")
    g.add_argument("--tune-epochs", type=int, default=None, help="epochs per trial (default: --epochs)")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values: dict[str, Any] = load_recipe(args.config) if args.config else {}
    names = {f.name for f in fields(TrainConfig)}
    for key, value in vars(args).items():
        if key in names and value is not None:
            values[key] = tuple(value) if isinstance(value, list) else value
    if not values.get("data"):
        raise ValueError("--data is required (or a 'data' key in --config)")
    return TrainConfig.from_dict(values)
