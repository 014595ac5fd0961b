"""One readable training loop (nanoGPT / accelerate-examples style) driven by a `TrainConfig`.

`train(cfg)` runs on one CPU, one GPU, or several processes under `accelerate launch` / torchrun
(DDP). Only the main process writes files, prints, draws plots or pushes to the Hub.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score
from torch.utils.data import DataLoader, RandomSampler

from . import calibration, checkpoint, tta
from .config import TrainConfig
from .constants import CACHE_SHORT_SIDE, MANIFEST_FILE
from .data import (DataError, LesionDataset, LesionTable, balanced_sampler, build_cache, class_weights,
                   lesion_grouped_split, load_table, read_duplicate_pairs, read_manifest, select_split,
                   write_manifest)
from .data.splits import manifest_hash
from .losses import build_loss
from .modelfolder import load_model_folder, save_model_folder, update_extras
from .models import check_model_name, create_model
from .taxonomy import parse_label_map
from .transforms import Augmentation, Preprocessing, eval_transform, train_transform

HISTORY_FILE = "history.csv"


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


def preprocessing_of(cfg: TrainConfig) -> Preprocessing:
    return Preprocessing(input_size=cfg.image_size, crop_pct=cfg.crop_pct, interpolation=cfg.interpolation)


def augmentation_of(cfg: TrainConfig) -> Augmentation:
    return Augmentation(scale_min=cfg.scale_min, rotate_degrees=cfg.rotate_degrees, color_jitter=cfg.color_jitter,
                        rand_augment=cfg.rand_augment, random_erasing=cfg.random_erasing)


def check_output_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise TrainingSetupError(f"output folder {path} is not writable ({err})") from err


def prepare_split(cfg: TrainConfig, is_main: bool) -> SplitData:
    """Read the data and the split; make the lesion-grouped split when no manifest was given.

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
    train_t = select_split(table, manifest, "train")
    val_t = select_split(table, manifest, "val")
    # Sorted before ids are assigned: every process and every later run agrees on class indices.
    classes = sorted(set(train_t.frame["label"]) | set(val_t.frame["label"]))
    missing = sorted(set(classes) - set(train_t.frame["label"]))
    if missing:
        raise TrainingSetupError(f"class(es) {missing} appear in the validation split but not in training")
    return SplitData(train=train_t, val=val_t, classes=classes, manifest_path=manifest_path)


def build_model(cfg: TrainConfig, classes: list[str]) -> torch.nn.Module:
    if cfg.init_from:
        loaded = load_model_folder(cfg.init_from)
        if loaded.label_names != classes:
            if len(loaded.label_names) != len(classes):
                raise TrainingSetupError(
                    f"--init-from {cfg.init_from} has {len(loaded.label_names)} classes {loaded.label_names}, "
                    f"the data has {len(classes)} {classes}; fine-tune from a model with the same classes"
                )
            raise TrainingSetupError(
                f"--init-from {cfg.init_from} classes {loaded.label_names} differ from the data's {classes}"
            )
        if loaded.architecture != cfg.model:
            raise TrainingSetupError(f"--init-from is a {loaded.architecture}, but --model is {cfg.model}")
        return loaded.model.train()
    return create_model(cfg.model, len(classes), pretrained=cfg.pretrained, drop_rate=cfg.drop_rate, **cfg.model_args)


def epoch_metrics(targets: np.ndarray, logits: np.ndarray, classes: list[str]) -> dict[str, float]:
    preds = logits.argmax(axis=1)
    labels = list(range(len(classes)))
    recalls = recall_score(targets, preds, labels=labels, average=None, zero_division=0)
    out = {
        "val_loss": float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(targets)).item()),
        "val_accuracy": float((preds == targets).mean()),
        "val_balanced_accuracy": float(balanced_accuracy_score(targets, preds)),
        "val_macro_f1": float(f1_score(targets, preds, labels=labels, average="macro", zero_division=0)),
    }
    out.update({f"val_recall_{c}": float(r) for c, r in zip(classes, recalls)})
    return out


@torch.no_grad()
def predict_logits(model: torch.nn.Module, loader: DataLoader, accelerator: Accelerator,
                   views: tuple = (tta.IDENTITY,), channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(V, N, K) logits and (N,) targets over the whole (sharded) loader, gathered on every process."""
    model.eval()
    all_logits, all_targets = [], []
    for x, y in loader:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with accelerator.autocast():
            logits = tta.tta_logits(model, x, views).float()
        # gather_for_metrics drops the samples DDP padding duplicated at the end of the set.
        logits, y = accelerator.gather_for_metrics((logits.permute(1, 0, 2).contiguous(), y))
        all_logits.append(logits.cpu())
        all_targets.append(y.cpu())
    return torch.cat(all_logits).permute(1, 0, 2), torch.cat(all_targets)


def write_history(path: Path, history: list[dict]) -> None:
    keys = list(dict.fromkeys(k for row in history for k in row))
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    tmp.replace(path)


def plot_history(path: Path, history: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    ax1.plot(epochs, [h["val_loss"] for h in history], label="val loss")
    ax1.set_xlabel("epoch")
    ax1.legend()
    for key in ("val_accuracy", "val_balanced_accuracy", "val_macro_f1"):
        ax2.plot(epochs, [h[key] for h in history], label=key.removeprefix("val_"))
    ax2.set_xlabel("epoch")
    ax2.set_ylim(0, 1)
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(path: Path, targets: np.ndarray, preds: np.ndarray, classes: list[str], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(6, 5))
    ConfusionMatrixDisplay.from_predictions(targets, preds, labels=list(range(len(classes))), display_labels=classes,
                                            normalize="true", values_format=".2f", ax=ax, colorbar=False)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def make_loader(dataset: LesionDataset, cfg: TrainConfig, *, train: bool, generator: torch.Generator | None) -> DataLoader:
    sampler = None
    if train:
        if cfg.sampling == "balanced":
            sampler = balanced_sampler(dataset.targets, len(dataset.class_to_idx), generator=generator)
        else:
            sampler = RandomSampler(dataset, generator=generator)
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, shuffle=False, drop_last=train,
                      num_workers=cfg.workers, persistent_workers=cfg.workers > 0, pin_memory=torch.cuda.is_available())


def train(cfg: TrainConfig) -> dict:
    """Train, keep the best model by validation balanced accuracy, write the model folder; returns the summary."""
    mp = resolve_mixed_precision(cfg.mixed_precision)
    accelerator = Accelerator(mixed_precision=mp, gradient_accumulation_steps=cfg.grad_accum)
    is_main = accelerator.is_main_process
    out = Path(cfg.output_dir)
    # Fail before any slow work: bad names, folders and Hub settings are known now.
    check_model_name(cfg.model)
    if is_main:
        check_output_dir(out)
    if cfg.push_to_hub:
        from .publish import check_can_push

        check_can_push(cfg.push_to_hub)
    if cfg.pretrained:
        from .hub import require_hub

        require_hub(f"ImageNet weights for {cfg.model!r} (--pretrained)")
    accelerator.wait_for_everyone()

    set_seed(cfg.seed)  # before the split and the model, so every process builds the same ones
    split = prepare_split(cfg, is_main)
    classes = split.classes
    pre = preprocessing_of(cfg)
    short_side = min(CACHE_SHORT_SIDE, math.ceil(cfg.image_size / cfg.crop_pct * 1.25))
    accelerator.print(f"train {len(split.train.frame)} / val {len(split.val.frame)} images, classes {classes}")
    t0 = time.time()
    train_cache = build_cache(split.train.frame["path"].tolist(), short_side, progress=is_main and cfg.progress)
    val_cache = build_cache(split.val.frame["path"].tolist(), short_side)
    accelerator.print(f"decoded {len(train_cache) + len(val_cache)} images in {time.time() - t0:.0f}s")
    train_ds = LesionDataset(split.train, classes, train_transform(pre, augmentation_of(cfg)), images=train_cache)
    val_ds = LesionDataset(split.val, classes, eval_transform(pre), images=val_cache)
    if len(train_ds) < cfg.batch_size * accelerator.num_processes:
        raise TrainingSetupError(f"training split has {len(train_ds)} images, fewer than one batch")

    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = make_loader(train_ds, cfg, train=True, generator=generator)
    val_loader = make_loader(val_ds, cfg, train=False, generator=None)

    model = build_model(cfg, classes)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    weights = class_weights(train_ds.targets, len(classes))
    criterion = build_loss(cfg.loss, class_weights=weights, label_smoothing=cfg.label_smoothing,
                           focal_gamma=cfg.focal_gamma)

    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler
    from timm.utils import ModelEmaV3

    # timm's factory keeps weight decay off norms and biases.
    optimizer = create_optimizer_v2(model, opt="adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)
    batches_per_epoch = len(train_loader) // accelerator.num_processes
    if cfg.limit_train_batches:
        batches_per_epoch = min(batches_per_epoch, cfg.limit_train_batches)
    updates_per_epoch = max(1, batches_per_epoch // cfg.grad_accum)
    scheduler = CosineLRScheduler(optimizer, t_initial=cfg.epochs * updates_per_epoch, lr_min=cfg.lr * cfg.min_lr_ratio,
                                  warmup_t=int(cfg.warmup_epochs * updates_per_epoch), warmup_lr_init=cfg.lr * 0.01,
                                  warmup_prefix=True, t_in_epochs=False)
    # The loss holds no parameters: move it, do not hand it to prepare() (DDP refuses parameter-free modules).
    criterion = criterion.to(accelerator.device)
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    ema = ModelEmaV3(accelerator.unwrap_model(model), decay=cfg.ema_decay, use_warmup=True) if cfg.ema else None

    history: list[dict] = []
    start_epoch, start_batch, num_updates = 0, 0, 0
    best = {"val_balanced_accuracy": -1.0, "epoch": -1}
    ckpt_root = out / "checkpoints"
    if cfg.resume:
        latest = checkpoint.latest_checkpoint(ckpt_root)
        if latest is None:
            accelerator.print(f"--resume: no checkpoint in {ckpt_root}, starting from scratch")
        else:
            state = checkpoint.load_checkpoint(latest, model=accelerator.unwrap_model(model),
                                               ema=ema.module if ema else None)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            history, best = state["history"], state["best"]
            start_epoch, start_batch, num_updates = state["epoch"], state["batch"], state["num_updates"]
            checkpoint.set_rng_state(state["rng"])
            accelerator.print(f"resumed from {latest} at epoch {start_epoch} batch {start_batch}")

    def save_ckpt(epoch: int, batch: int) -> None:
        if is_main:
            checkpoint.save_checkpoint(ckpt_root, num_updates, model=accelerator.unwrap_model(model),
                                       ema=ema.module if ema else None,
                                       state={"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                              "history": history, "best": best, "epoch": epoch, "batch": batch,
                                              "num_updates": num_updates, "rng": checkpoint.rng_state(),
                                              "config": json.dumps(cfg.to_dict())})
        accelerator.wait_for_everyone()

    eval_model = (lambda: ema.module) if ema else (lambda: model)
    patience_left = cfg.early_stopping
    train_start = time.time()
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        # The sampler order of an epoch depends only on (seed, epoch): a resumed run replays it exactly.
        generator.manual_seed(cfg.seed * 1000 + epoch)
        loader = train_loader
        skip = start_batch if epoch == start_epoch else 0
        if skip:
            loader = accelerator.skip_first_batches(train_loader, skip)
        progress = None
        if is_main and cfg.progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=batches_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch")
        loss_sum, seen, last_ckpt, epoch_t0 = 0.0, 0, time.time(), time.time()
        for batch_idx, (x, y) in enumerate(loader, start=skip):
            if batch_idx >= batches_per_epoch:
                break
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    loss = criterion(model(x), y)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    if cfg.grad_clip > 0:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if accelerator.sync_gradients:
                    num_updates += 1
                    scheduler.step_update(num_updates)
                    if ema is not None:
                        ema.update(accelerator.unwrap_model(model), step=num_updates)
            loss_sum += loss.item() * y.shape[0]
            seen += y.shape[0]
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{loss_sum / seen:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
            if cfg.checkpoint_minutes > 0 and time.time() - last_ckpt > cfg.checkpoint_minutes * 60:
                save_ckpt(epoch, batch_idx + 1)
                last_ckpt = time.time()
        if progress is not None:
            progress.close()
        train_loss = accelerator.gather(torch.tensor([loss_sum, seen], device=accelerator.device)).reshape(-1, 2).sum(0)
        train_seconds = time.time() - epoch_t0

        logits, targets = predict_logits(eval_model(), val_loader, accelerator, channels_last=cfg.channels_last)
        metrics = epoch_metrics(targets.numpy(), logits[0].numpy(), classes)
        row = {"epoch": epoch + 1, "train_loss": float(train_loss[0] / max(train_loss[1], 1)),
               "lr": optimizer.param_groups[0]["lr"], "epoch_seconds": round(train_seconds, 1), **metrics}
        history.append(row)
        accelerator.print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))
        improved = metrics["val_balanced_accuracy"] > best["val_balanced_accuracy"]
        if improved:
            best = {**metrics, "epoch": epoch + 1}
            patience_left = cfg.early_stopping
            if is_main:
                save_model_folder(out, accelerator.unwrap_model(eval_model()), architecture=cfg.model,
                                  label_names=classes, preprocessing=pre, model_args=dict(cfg.model_args),
                                  extras=_extras(cfg, split, best, temperature=1.0))
                plot_confusion(out / "confusion_matrix_val.png", targets.numpy(), logits[0].numpy().argmax(1), classes,
                               f"validation, epoch {epoch + 1} (row-normalised)")
        else:
            patience_left -= 1
        if is_main:
            write_history(out / HISTORY_FILE, history)
            plot_history(out / "history.png", history)
        save_ckpt(epoch + 1, 0)
        if cfg.early_stopping and patience_left <= 0:
            accelerator.print(f"early stopping: no gain in validation balanced accuracy for {cfg.early_stopping} epochs")
            break

    summary = {"best": best, "train_minutes": round((time.time() - train_start) / 60, 1), "epochs_run": len(history)}
    summary.update(finalize(cfg, accelerator, split, val_loader) if best["epoch"] > 0 else {})
    if is_main:
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
        if cfg.push_to_hub:
            from .publish import push_folder

            summary["hub_url"] = push_folder(out, cfg.push_to_hub, private=cfg.hub_private)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


def _extras(cfg: TrainConfig, split: SplitData, best: dict, temperature: float) -> dict:
    return {"tta": cfg.tta, "temperature": temperature, "train_config": cfg.to_dict(),
            "manifest_sha256": manifest_hash(split.manifest_path) if split.manifest_path.exists() else None,
            "val_metrics": best, "trained_with": "skinlesion"}


def finalize(cfg: TrainConfig, accelerator: Accelerator, split: SplitData, val_loader: DataLoader) -> dict:
    """Calibrate the best saved model on the validation split: temperature + OOD threshold (TTA as shipped)."""
    out = Path(cfg.output_dir)
    accelerator.wait_for_everyone()
    loaded = load_model_folder(out)
    views = tta.get_views(cfg.tta)
    logits, targets = predict_logits(loaded.model.to(accelerator.device), val_loader, accelerator, views=views)
    temperature = calibration.fit_temperature(logits, targets)
    before = calibration.expected_calibration_error(calibration.calibrated_probs(logits, 1.0).numpy(), targets.numpy())
    after = calibration.expected_calibration_error(calibration.calibrated_probs(logits, temperature).numpy(),
                                                   targets.numpy())
    threshold = calibration.fit_ood_threshold(calibration.energy_score(logits, temperature).numpy())
    result = {"temperature": temperature, "val_ece_before": before, "val_ece_after": after}
    if accelerator.is_main_process:
        update_extras(out, temperature=temperature,
                      ood={"score": "energy", "threshold": threshold, "quantile": 0.01},
                      calibration={"fitted_on": "val", "tta": cfg.tta, "ece_before": before, "ece_after": after,
                                   "n": int(len(targets))})
        from .modelcard import write_model_card

        write_model_card(out)
    return result


__all__ = ["TrainingSetupError", "DataError", "train", "prepare_split", "epoch_metrics"]
