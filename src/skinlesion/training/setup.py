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
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from accelerate import Accelerator

from ..constants import DEFAULT_MEAN, DEFAULT_STD, MANIFEST_FILE
from ..data import (
    lesion_grouped_split,
    read_duplicate_pairs,
    read_manifest,
    select_split,
    write_manifest,
)
from ..data.sources import load_sources
from ..data.splits import EXCLUDED
from ..data.table import DataError, LesionTable
from ..data.transforms import Augmentation, Preprocessing
from ..models.architectures import check_model_name
from ..models.folder import read_config, resolve_folder
from ..models.pretrained import check_weights_file, normalisation_for
from ..taxonomy import parse_label_map
from . import checkpoint
from .config import TrainConfig

CHECKPOINT_DIR = "checkpoints"
DUPLICATES_FILE = "near_duplicates.csv"


class TrainingSetupError(ValueError):
    """The run cannot start: the message says which input is wrong."""


@dataclass
class SplitData:
    train: LesionTable
    val: LesionTable
    classes: list[str]
    manifest_path: Path
    sources: list[dict] = field(default_factory=list)          # per source: name, path, layout, counts per split
    duplicate_screen: dict = field(default_factory=dict)        # near-duplicate pairs found, training images left out


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


def assign_splits(table: LesionTable, manifest: pd.DataFrame | None, *, val: float, test: float, seed: int,
                  pairs: list[tuple[str, str]]) -> pd.DataFrame:
    """`image_id, split, source` for every row: a given manifest first, then each source's official (or given)
    split, then a lesion-grouped split per remaining source with its same-lesion and near-duplicate pairs merged.

    An image the manifest lists keeps its split, so a model fine-tuned on more sources keeps the split its
    starting weights were trained on (its validation and test images stay unseen).
    """
    frame = table.frame
    split = pd.Series("", index=frame.index, dtype=object)
    if manifest is not None:
        split = frame["image_id"].map(dict(zip(manifest["image_id"], manifest["split"], strict=True))).fillna("")
    pinned = (split == "") & (frame["source_split"].fillna("") != "")
    split[pinned] = frame.loc[pinned, "source_split"]
    for source in dict.fromkeys(frame.loc[split == "", "source"]):
        rows = frame.index[(split == "") & (frame["source"] == source)]
        sub = LesionTable(frame=frame.loc[rows].reset_index(drop=True), layout=table.layout, root=table.root)
        made = lesion_grouped_split(sub, val=val, test=test, seed=seed, duplicate_pairs=pairs)
        split[rows] = made["split"].to_numpy()
    return pd.DataFrame({"image_id": frame["image_id"], "split": split, "source": frame["source"]})


def same_lesion_pairs(table: LesionTable, extra: str | None) -> list[tuple[str, str]]:
    """Published same-lesion pairs: `extra` (--duplicates) and each source's `duplicate_lesion_pairs.csv`."""
    paths = [Path(extra)] if extra else []
    paths += [Path(info["root"]) / "duplicate_lesion_pairs.csv" for info in table.sources]
    pairs: list[tuple[str, str]] = []
    for path in dict.fromkeys(paths):
        if path.exists():
            pairs += read_duplicate_pairs(path)
    return pairs


def screen_duplicates(cfg: TrainConfig, table: LesionTable, *, progress: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Near-duplicate pairs among the sources and against the --holdout folders; (pairs, holdout frame)."""
    from ..data import near_duplicates

    holdout = load_sources(list(cfg.holdout), label_map=parse_label_map(cfg.label_map), skip_bad=cfg.skip_bad) \
        if cfg.holdout else None
    frame = table.frame[["image_id", "path", "source"]]
    if holdout is not None:
        held = holdout.frame[["image_id", "path", "source"]].assign(source=lambda f: "holdout:" + f["source"])
        frame = pd.concat([frame, held[~held["image_id"].isin(frame["image_id"])]], ignore_index=True)
    if cfg.duplicate_distance <= 0:
        return pd.DataFrame(columns=["image_a", "image_b", "distance", "source_a", "source_b"]), frame
    found = near_duplicates.screen(frame, max_distance=cfg.duplicate_distance, progress=progress)
    return found.pairs, frame


def prepare_split(cfg: TrainConfig, is_main: bool) -> SplitData:
    """Read every source and the split (images decoded only for the near-duplicate hashes); make the split
    when no manifest covers it; leave out training images that duplicate a validation, test or held-out image.

    Every process computes the same split from the seed, so no file has to be shared before the
    processes synchronise; only the main process writes the manifest and the duplicate list.
    """
    from ..data.near_duplicates import training_leaks

    table = load_sources(list(cfg.data), layout=cfg.layout, label_map=parse_label_map(cfg.label_map),
                         skip_bad=cfg.skip_bad)
    out = Path(cfg.output_dir)
    saved = out / MANIFEST_FILE
    given = read_manifest(cfg.manifest) if cfg.manifest else \
        read_manifest(saved) if cfg.resume and saved.exists() else None  # a resumed run keeps its split
    dup_pairs, screened = screen_duplicates(cfg, table, progress=is_main and cfg.progress)
    near = list(zip(dup_pairs["image_a"], dup_pairs["image_b"], strict=True))
    manifest = assign_splits(table, given, val=cfg.val_fraction, test=cfg.test_fraction, seed=cfg.seed,
                             pairs=same_lesion_pairs(table, cfg.duplicates) + near)
    split_of = dict(zip(manifest["image_id"], manifest["split"], strict=True))
    split_of.update({i: "holdout" for i, s in zip(screened["image_id"], screened["source"], strict=True)
                     if s.startswith("holdout:") and i not in split_of})
    leaks = training_leaks(split_of, near)
    manifest.loc[manifest["image_id"].isin(leaks), "split"] = EXCLUDED
    manifest_path = out / MANIFEST_FILE
    if is_main:
        write_manifest(manifest, manifest_path)
        dup_pairs.assign(split_a=dup_pairs["image_a"].map(split_of), split_b=dup_pairs["image_b"].map(split_of)) \
            .to_csv(out / DUPLICATES_FILE, index=False)
    tables = {}
    for name in ("train", "val"):
        try:
            tables[name] = select_split(table, manifest, name)
        except DataError as err:
            if "is empty" not in str(err):
                raise
            hint = "--val-fraction above 0" if name == "val" else "a manifest with 'train' rows"
            raise TrainingSetupError(f"the {name} split has no images ({', '.join(cfg.data)}); use {hint}") from err
    train_t, val_t = tables["train"], tables["val"]
    # Sorted before ids are assigned: every process and every later run agrees on class indices.
    classes = sorted(set(train_t.frame["label"]) | set(val_t.frame["label"]))
    missing = sorted(set(classes) - set(train_t.frame["label"]))
    if missing:
        raise TrainingSetupError(f"class(es) {missing} appear in the validation split but not in training")
    sources = source_records(table, manifest)
    screen = {"max_distance": cfg.duplicate_distance, "n_pairs": int(len(dup_pairs)),
              "train_images_left_out": int(len(leaks)), "holdout": list(cfg.holdout), "pairs_file": DUPLICATES_FILE}
    return SplitData(train=train_t, val=val_t, classes=classes, manifest_path=manifest_path, sources=sources,
                     duplicate_screen=screen)


def source_records(table: LesionTable, manifest: pd.DataFrame) -> list[dict]:
    """Per source folder: what `load_sources` recorded plus the image count per split and class."""
    split_of = dict(zip(manifest["image_id"], manifest["split"], strict=True))
    records = []
    for info in table.sources:
        rows = table.frame[(table.frame["source"] == info["name"]) & (table.frame["source_root"] == info["root"])]
        counts = pd.crosstab(rows["image_id"].map(split_of), rows["label"])
        records.append({**info, "per_split": {s: {c: int(n) for c, n in counts.loc[s].items() if n}
                                              for s in counts.index}})
    return records


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
