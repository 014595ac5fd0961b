"""Everything a training run settles before its first image is decoded, each check failing in seconds.

`check_setup` (names, output folder, earlier checkpoints, Hub, pretrained file, --init-from),
`prepare_split` (the table and the lesion-grouped split; only the main process writes the manifest),
`check_split` (a batch's worth of images, classes matching --init-from), the Accelerator, and the
preprocessing and augmentation a `TrainConfig` asks for. `fail_together` makes a failed check stop
every process, not just the one that saw it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator

from ..constants import DEFAULT_MEAN, DEFAULT_STD, MANIFEST_FILE
from ..data import (
    lesion_grouped_split,
    load_table,
    read_duplicate_pairs,
    read_manifest,
    select_split,
    write_manifest,
)
from ..data.table import DataError, LesionTable
from ..data.transforms import Augmentation, Preprocessing
from ..models.architectures import check_model_name
from ..models.folder import read_config, resolve_folder
from ..models.pretrained import check_weights_file, normalisation_for
from ..taxonomy import parse_label_map
from . import checkpoint
from .config import TrainConfig

CHECKPOINT_DIR = "checkpoints"


class TrainingSetupError(ValueError):
    """The run cannot start: the message says which input is wrong."""


@dataclass
class SplitData:
    train: LesionTable
    val: LesionTable
    classes: list[str]
    manifest_path: Path


def resolve_mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def preprocessing_of(cfg: TrainConfig, init_cfg: dict | None = None) -> Preprocessing:
    """The model's preprocessing; mean/std follow the starting weights (ImageNet's unless they say otherwise).

    ImageNet weights keep the normalisation they were trained with (0.5/0.5 for tf_efficientnet_lite*,
    timm's pretrained_cfg says which); --init-from keeps that folder's; from scratch, ImageNet's.
    """
    mean, std = DEFAULT_MEAN, DEFAULT_STD
    if cfg.pretrained or cfg.pretrained_file:
        norm = normalisation_for(cfg.model)
        mean, std = norm.mean, norm.std
    elif init_cfg is not None:
        mean = tuple(init_cfg["pretrained_cfg"].get("mean", DEFAULT_MEAN))
        std = tuple(init_cfg["pretrained_cfg"].get("std", DEFAULT_STD))
    return Preprocessing(input_size=cfg.image_size, mean=mean, std=std, crop_pct=cfg.crop_pct,
                         interpolation=cfg.interpolation, color_constancy=cfg.color_constancy,
                         fov_crop=cfg.fov_crop)


def augmentation_of(cfg: TrainConfig) -> Augmentation:
    return Augmentation(scale_min=cfg.scale_min, ratio=(1 / cfg.max_aspect, cfg.max_aspect), zoom_out=cfg.zoom_out,
                        aperture=cfg.aperture, channel_gain=cfg.channel_gain,
                        rotate_degrees=cfg.rotate_degrees, color_jitter=cfg.color_jitter,
                        rand_augment=cfg.rand_augment, random_erasing=cfg.random_erasing)


def launched_world_size() -> int:
    """Processes the launcher (torchrun, `accelerate launch --multi_gpu`) started, from its env vars."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """The Accelerator for this run; several processes on a machine without CUDA become gloo DDP.

    accelerate selects its multi-CPU mode only when asked for the CPU: under torchrun or
    `accelerate launch --multi_gpu` without CUDA it otherwise gives every process a world of one,
    and N independent trainings then overwrite one output folder. (`accelerate launch --cpu
    --num_processes N` starts a single process; see the README.)
    """
    world = launched_world_size()
    accelerator = Accelerator(cpu=world > 1 and not torch.cuda.is_available(),
                              mixed_precision=resolve_mixed_precision(cfg.mixed_precision),
                              gradient_accumulation_steps=cfg.grad_accum)
    if accelerator.num_processes != world:
        raise TrainingSetupError(f"the launcher started {world} processes (WORLD_SIZE) but accelerate joined "
                                 f"{accelerator.num_processes}; use `torchrun --nproc_per_node N train.py ...`")
    return accelerator


def check_output_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise TrainingSetupError(f"output folder {path} is not writable ({err})") from err


def check_setup(cfg: TrainConfig, *, is_main: bool) -> dict | None:
    """Checks that take seconds at most, run before the data is read; returns --init-from's config.json.

    Each raises a specific error naming the flag to change.
    """
    check_model_name(cfg.model)
    out = Path(cfg.output_dir)
    if is_main:
        check_output_dir(out)
    if not cfg.resume and checkpoint.latest_checkpoint(out / CHECKPOINT_DIR) is not None:
        raise TrainingSetupError(f"{out / CHECKPOINT_DIR} holds checkpoints of an earlier run: pass --resume to "
                                 "continue it, or choose another --output-dir (or delete that folder)")
    if cfg.push_to_hub:
        from ..publish import check_can_push

        check_can_push(cfg.push_to_hub)
    if cfg.pretrained:
        from ..hub import require_hub

        require_hub(f"ImageNet weights for {cfg.model!r} (--pretrained)")
    if cfg.pretrained_file:
        check_weights_file(cfg.pretrained_file, cfg.model)  # names, shapes only: seconds, before any image
    if not cfg.init_from:
        return None
    init_cfg = read_config(resolve_folder(cfg.init_from))  # config.json only; the weights load later
    if init_cfg["architecture"] != cfg.model:
        raise TrainingSetupError(f"--init-from {cfg.init_from} is a {init_cfg['architecture']}, but --model is "
                                 f"{cfg.model}")
    return init_cfg


def fail_together(accelerator: Accelerator, check: Callable[[], object]) -> object:
    """Run `check` on every process; if it raised on any, raise on all (no rank is left waiting in a barrier)."""
    result, error = None, None
    try:
        result = check()
    except Exception as err:  # noqa: BLE001 - re-raised below, on this process and (as a pointer) on the others
        error = err
    if accelerator.num_processes > 1:
        failed = accelerator.gather(torch.tensor([int(error is not None)], device=accelerator.device))
        if error is None and int(failed.sum()) > 0:
            error = TrainingSetupError("another process failed its start-up checks; its message is above")
    if error is not None:
        raise error
    return result


def prepare_split(cfg: TrainConfig, is_main: bool) -> SplitData:
    """Read the data table and the split (no image is decoded); make the lesion-grouped split when no manifest was given.

    Every process computes the same split from the seed, so no file has to be shared before the
    processes synchronise; only the main process writes the manifest.
    """
    table = load_table(cfg.data, layout=cfg.layout, label_map=parse_label_map(cfg.label_map), skip_bad=cfg.skip_bad)
    out = Path(cfg.output_dir)
    if cfg.manifest:
        manifest = read_manifest(cfg.manifest)
    else:
        saved = out / MANIFEST_FILE
        if cfg.resume and saved.exists():
            manifest = read_manifest(saved)  # a resumed run keeps the split it started with
        else:
            dup_path = Path(cfg.duplicates) if cfg.duplicates else Path(table.root) / "duplicate_lesion_pairs.csv"
            pairs = read_duplicate_pairs(dup_path) if dup_path.exists() else []
            manifest = lesion_grouped_split(table, val=cfg.val_fraction, test=cfg.test_fraction, seed=cfg.seed,
                                            duplicate_pairs=pairs)
    manifest_path = out / MANIFEST_FILE
    if is_main:
        write_manifest(manifest, manifest_path)
    tables = {}
    for name in ("train", "val"):
        try:
            tables[name] = select_split(table, manifest, name)
        except DataError as err:
            if "is empty" not in str(err):
                raise
            hint = "--val-fraction above 0" if name == "val" else "a manifest with 'train' rows"
            raise TrainingSetupError(f"the {name} split has no images ({cfg.data}); use {hint}") from err
    train_t, val_t = tables["train"], tables["val"]
    # Sorted before ids are assigned: every process and every later run agrees on class indices.
    classes = sorted(set(train_t.frame["label"]) | set(val_t.frame["label"]))
    missing = sorted(set(classes) - set(train_t.frame["label"]))
    if missing:
        raise TrainingSetupError(f"class(es) {missing} appear in the validation split but not in training")
    return SplitData(train=train_t, val=val_t, classes=classes, manifest_path=manifest_path)


def check_split(cfg: TrainConfig, split: SplitData, num_processes: int, init_cfg: dict | None) -> None:
    """Checks that need the split but no pixels: enough images for a batch, classes matching --init-from."""
    n_train, per_step = len(split.train.frame), cfg.batch_size * num_processes
    if n_train < per_step:
        raise TrainingSetupError(f"the training split has {n_train} images, fewer than one batch "
                                 f"({cfg.batch_size} per process x {num_processes}); lower --batch-size")
    if init_cfg is not None:
        labels = list(init_cfg.get("label_names") or init_cfg["pretrained_cfg"].get("label_names") or [])
        if labels != split.classes:
            what = "classes" if len(labels) == len(split.classes) else f"{len(labels)} classes"
            raise TrainingSetupError(
                f"--init-from {cfg.init_from} has {what} {labels}, the data has {len(split.classes)} "
                f"{split.classes}; fine-tune from a model with the same classes")
