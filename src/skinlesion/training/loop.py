"""One readable training loop (nanoGPT / accelerate-examples style) driven by a `TrainConfig`.

`train(cfg)` runs on one CPU, one GPU, or several processes under `accelerate launch` / torchrun
(DDP; gloo on CPU). Only the main process writes files, prints, draws plots or pushes to the Hub.

The order in `train` is deliberate: every check that takes at most seconds (names, folders, Hub,
split, class counts; `setup.py`) runs before the first image is decoded, so bad input fails at once.
The per-batch work is `train_step`, shared with `skinlesion bench train`, so the benchmark measures
exactly the step that training runs.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, RandomSampler

from ..constants import CACHE_SHORT_SIDE
from ..data import (
    DataError,
    LesionDataset,
    balanced_sampler,
    build_cache,
    class_counts,
    class_weights,
)
from ..data.splits import manifest_hash
from ..data.transforms import Preprocessing, eval_transform, train_transform
from ..inference import calibration, tta
from ..models.architectures import create_model
from ..models.folder import load_model_folder, save_model_folder, update_extras
from ..models.pretrained import weights_provenance
from . import checkpoint
from .config import TrainConfig
from .history import plot_confusion, plot_history, write_history
from .losses import build_loss, seen_prior
from .setup import (
    CHECKPOINT_DIR,
    SplitData,
    TrainingSetupError,
    augmentation_of,
    check_setup,
    check_split,
    fail_together,
    make_accelerator,
    prepare_split,
    preprocessing_of,
)
from .val_metrics import epoch_metrics

HISTORY_FILE = "history.csv"


def build_datasets(cfg: TrainConfig, split: SplitData, pre: Preprocessing, *,
                   progress: bool) -> tuple[LesionDataset, LesionDataset]:
    """Decode every image once into the in-memory cache (the slow part of start-up) and wrap it in datasets."""
    # Enough pixels for the largest RandomResizedCrop/eval resize of this input size, and no more.
    short_side = min(CACHE_SHORT_SIDE, math.ceil(cfg.image_size / cfg.crop_pct * 1.25))
    train_cache = build_cache(split.train.frame["path"].tolist(), short_side, progress=progress)
    val_cache = build_cache(split.val.frame["path"].tolist(), short_side)
    train_ds = LesionDataset(split.train, split.classes, train_transform(pre, augmentation_of(cfg)), images=train_cache)
    val_ds = LesionDataset(split.val, split.classes, eval_transform(pre), images=val_cache)
    return train_ds, val_ds


def make_loader(dataset: LesionDataset, cfg: TrainConfig, *, train: bool, generator: torch.Generator | None) -> DataLoader:
    sampler = None
    if train:
        if cfg.sampling == "balanced":
            sampler = balanced_sampler(dataset.targets, len(dataset.class_to_idx), generator=generator,
                                       power=cfg.sampling_power)
        else:
            sampler = RandomSampler(dataset, generator=generator)
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, shuffle=False, drop_last=train,
                      num_workers=cfg.workers, persistent_workers=cfg.workers > 0, pin_memory=torch.cuda.is_available())


def build_model(cfg: TrainConfig, classes: list[str]) -> torch.nn.Module:
    if cfg.init_from:
        loaded = load_model_folder(cfg.init_from)
        if loaded.label_names != classes or loaded.architecture != cfg.model:  # check_split ran on config.json
            raise TrainingSetupError(f"--init-from {cfg.init_from} changed since start-up: {loaded.architecture} "
                                     f"with classes {loaded.label_names}")
        return loaded.model.train()
    model = create_model(cfg.model, len(classes), pretrained=cfg.pretrained, pretrained_file=cfg.pretrained_file,
                         drop_rate=cfg.drop_rate, **cfg.model_args)
    if cfg.pretrained or cfg.pretrained_file:
        zero_classifier(model)
    return model


def zero_classifier(model: torch.nn.Module) -> None:
    """Start the fresh head at zero logits (uniform predictions), as BiT does for transfer.

    timm's random head on ImageNet features gives logits with std ~3 (tf_efficientnet_lite0, 1280
    features): the first epoch then spends its updates undoing confident random guesses and the
    large early gradients disturb the pretrained layers.
    """
    head = model.get_classifier()
    if isinstance(head, torch.nn.Linear):
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)


@dataclass
class StepState:
    """Everything one optimisation step touches; `train_step` advances it."""

    accelerator: Accelerator
    model: torch.nn.Module              # prepared (DDP-wrapped when distributed)
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer    # prepared
    scheduler: object                   # timm scheduler, stepped per optimiser update
    ema: object | None                  # timm ModelEmaV3 of the unwrapped model
    grad_clip: float
    channels_last: bool
    num_updates: int = 0


def build_step_state(cfg: TrainConfig, classes: list[str], train_targets: list[int], accelerator: Accelerator,
                     train_loader: DataLoader, val_loader: DataLoader) -> tuple[StepState, DataLoader, DataLoader, int]:
    """Model, loss, optimiser, schedule and EMA, prepared; returns (state, train_loader, val_loader, batches_per_epoch)."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler
    from timm.utils import ModelEmaV3

    model = build_model(cfg, classes)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    weights = class_weights(train_targets, len(classes))
    prior = seen_prior(class_counts(train_targets, len(classes)),
                       cfg.sampling_power if cfg.sampling == "balanced" else None)
    criterion = build_loss(cfg.loss, class_weights=weights, label_smoothing=cfg.label_smoothing,
                           focal_gamma=cfg.focal_gamma, prior=prior, logit_adjust_tau=cfg.logit_adjust_tau)
    # timm's factory keeps weight decay off norms and biases.
    # layer_decay uses the architecture's own layer grouping (timm's group_matcher).
    optimizer = create_optimizer_v2(model, opt="adamw", lr=cfg.lr, weight_decay=cfg.weight_decay,
                                    layer_decay=cfg.layer_decay)
    # The loss holds no parameters: move it, do not hand it to prepare() (DDP refuses parameter-free modules).
    criterion = criterion.to(accelerator.device)
    # The scheduler is not prepared either: accelerate would step it once per process.
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    batches_per_epoch = len(train_loader)  # per process, after sharding
    if cfg.limit_train_batches:
        batches_per_epoch = min(batches_per_epoch, cfg.limit_train_batches)
    updates_per_epoch = max(1, batches_per_epoch // cfg.grad_accum)
    warmup = int(cfg.warmup_epochs * updates_per_epoch)
    # warmup_prefix: the cosine starts after the warm-up, so it must span the remaining updates to end at lr_min.
    scheduler = CosineLRScheduler(optimizer, t_initial=max(1, cfg.epochs * updates_per_epoch - warmup),
                                  lr_min=cfg.lr * cfg.min_lr_ratio, warmup_t=warmup, warmup_lr_init=cfg.lr * 0.01,
                                  warmup_prefix=True, t_in_epochs=False)
    ema = ModelEmaV3(accelerator.unwrap_model(model), decay=cfg.ema_decay, use_warmup=True) if cfg.ema else None
    state = StepState(accelerator=accelerator, model=model, criterion=criterion, optimizer=optimizer,
                      scheduler=scheduler, ema=ema, grad_clip=cfg.grad_clip, channels_last=cfg.channels_last)
    return state, train_loader, val_loader, batches_per_epoch


def train_step(state: StepState, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One micro-batch: forward, backward and, when gradients sync, clip + optimiser + schedule + EMA.

    x: (B, 3, H, W) normalised float, y: (B,) class indices. Returns the detached loss (no host sync here).
    """
    acc = state.accelerator
    if state.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with acc.accumulate(state.model):
        with acc.autocast():
            loss = state.criterion(state.model(x), y)  # (B, K) logits -> scalar
        acc.backward(loss)  # divides by grad_accum; DDP all-reduces gradients on the syncing micro-batch
        if acc.sync_gradients and state.grad_clip > 0:
            acc.clip_grad_norm_(state.model.parameters(), state.grad_clip)
        state.optimizer.step()  # a no-op on accumulating micro-batches (AcceleratedOptimizer)
        state.optimizer.zero_grad(set_to_none=True)
        if acc.sync_gradients:
            state.num_updates += 1
            state.scheduler.step_update(state.num_updates)
            if state.ema is not None:
                state.ema.update(acc.unwrap_model(state.model), step=state.num_updates)
    return loss.detach()


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


def head_lr(optimizer: torch.optim.Optimizer) -> float:
    """The largest group lr: with layer decay, group 0 is the stem at a small fraction of it."""
    return max(g["lr"] for g in optimizer.param_groups)


def _patience_exhausted(cfg: TrainConfig, history: list[dict], best: dict) -> bool:
    """Early stopping from the history itself, so a resumed run keeps counting where it stopped."""
    return bool(cfg.early_stopping and history and len(history) - best["epoch"] >= cfg.early_stopping)


def train(cfg: TrainConfig, command: str | None = None) -> dict:
    """Train, keep the best model by the validation selection score (`selection_score`), write the model folder."""
    accelerator = make_accelerator(cfg)
    is_main = accelerator.is_main_process
    out = Path(cfg.output_dir)
    ckpt_root = out / CHECKPOINT_DIR

    # 1. Seconds at most: names, folders, Hub, split and class counts, before one image is decoded.
    init_cfg = fail_together(accelerator, lambda: check_setup(cfg, is_main=is_main))
    set_seed(cfg.seed)  # before the split and the model, so every process builds the same ones
    split = prepare_split(cfg, is_main)
    check_split(cfg, split, accelerator.num_processes, init_cfg)
    classes, pre = split.classes, preprocessing_of(cfg, init_cfg)
    provenance = weights_provenance(cfg.model, pretrained=cfg.pretrained, pretrained_file=cfg.pretrained_file,
                                    init_from=cfg.init_from)
    accelerator.print(f"train {len(split.train.frame)} / val {len(split.val.frame)} images, classes {classes}, "
                      f"{accelerator.num_processes} process(es) on {accelerator.device}")

    # 2. The slow part of start-up: decode every image once.
    t0 = time.time()
    train_ds, val_ds = build_datasets(cfg, split, pre, progress=is_main and cfg.progress)
    accelerator.print(f"decoded {len(train_ds) + len(val_ds)} images in {time.time() - t0:.0f}s")
    generator = torch.Generator().manual_seed(cfg.seed)
    state, train_loader, val_loader, batches_per_epoch = build_step_state(
        cfg, classes, train_ds.targets, accelerator, make_loader(train_ds, cfg, train=True, generator=generator),
        make_loader(val_ds, cfg, train=False, generator=None))
    model, optimizer, ema = state.model, state.optimizer, state.ema

    history: list[dict] = []
    start_epoch, start_batch, carried = 0, 0, (0.0, 0)
    best = {"val_selection": -1.0, "epoch": -1}
    val_sources = split.val.frame["source"].to_numpy() if "source" in split.val.frame.columns else None
    if cfg.resume:
        latest = checkpoint.latest_checkpoint(ckpt_root)
        if latest is None:
            accelerator.print(f"--resume: no checkpoint in {ckpt_root}, starting from scratch")
        else:
            saved = checkpoint.load_checkpoint(latest, model=accelerator.unwrap_model(model),
                                               ema=ema.module if ema else None)
            if saved.get("classes", classes) != classes:
                raise TrainingSetupError(f"{latest} was trained on classes {saved['classes']}, the data has {classes}")
            optimizer.load_state_dict(saved["optimizer"])
            state.scheduler.load_state_dict(saved["scheduler"])
            history, best = saved["history"], saved["best"]
            start_epoch, start_batch, state.num_updates = saved["epoch"], saved["batch"], saved["num_updates"]
            carried = (float(saved.get("epoch_loss_sum", 0.0)), int(saved.get("epoch_seen", 0)))
            checkpoint.set_rng_state(saved["rng"])
            accelerator.print(f"resumed from {latest} at epoch {start_epoch + 1} batch {start_batch}")

    def save_ckpt(epoch: int, batch: int, loss_sum: float = 0.0, seen: int = 0) -> None:
        # Main process only and no barrier: the time-based mid-epoch decision differs between processes,
        # and the others need not wait (DDP's next all-reduce holds them until the main process is back).
        if is_main:
            checkpoint.save_checkpoint(
                ckpt_root, state.num_updates, model=accelerator.unwrap_model(model), ema=ema.module if ema else None,
                state={"optimizer": optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
                       "history": history, "best": best, "epoch": epoch, "batch": batch,
                       "num_updates": state.num_updates, "epoch_loss_sum": loss_sum, "epoch_seen": seen,
                       "rng": checkpoint.rng_state(), "classes": classes, "config": json.dumps(cfg.to_dict())})

    eval_model = (lambda: ema.module) if ema else (lambda: model)
    train_start = time.time()
    for epoch in range(start_epoch, cfg.epochs):
        if _patience_exhausted(cfg, history, best):
            accelerator.print(f"early stopping: no gain in the validation selection score for {cfg.early_stopping} epochs")
            break
        model.train()
        # The sampler order of an epoch depends only on (seed, epoch): a resumed run replays it exactly.
        generator.manual_seed(cfg.seed * 1000 + epoch)
        skip = start_batch if epoch == start_epoch else 0
        loader = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
        loss_sum, seen = carried if skip else (0.0, 0)
        progress = None
        if is_main and cfg.progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=batches_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch")
        last_ckpt, epoch_t0 = time.time(), time.time()
        for batch_idx, (x, y) in enumerate(loader, start=skip):
            if batch_idx >= batches_per_epoch:
                break
            loss = train_step(state, x, y)
            loss_sum += loss.item() * y.shape[0]
            seen += y.shape[0]
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{loss_sum / seen:.3f}", lr=f"{head_lr(optimizer):.2e}")
            # Mid-epoch only right after an optimiser update: accumulated gradients are not checkpointed.
            if cfg.checkpoint_minutes > 0 and time.time() - last_ckpt > cfg.checkpoint_minutes * 60 \
                    and batch_idx + 1 < batches_per_epoch and accelerator.sync_gradients:
                save_ckpt(epoch, batch_idx + 1, loss_sum, seen)
                last_ckpt = time.time()
        if progress is not None:
            progress.close()
        totals = accelerator.gather(torch.tensor([loss_sum, seen], dtype=torch.float64, device=accelerator.device))
        totals = totals.reshape(-1, 2).sum(0)  # (processes, 2) -> (2,)
        train_seconds = time.time() - epoch_t0

        logits, targets = predict_logits(eval_model(), val_loader, accelerator, channels_last=cfg.channels_last)
        metrics = epoch_metrics(targets.numpy(), logits[0].numpy(), classes, val_sources, cfg.selection)
        row = {"epoch": epoch + 1, "train_loss": float(totals[0] / max(float(totals[1]), 1.0)),
               "lr": head_lr(optimizer), "epoch_seconds": round(train_seconds, 1), **metrics}
        history.append(row)
        accelerator.print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))
        # A checkpoint from before several sources has no val_selection: its pooled balanced accuracy is the same rule.
        if metrics["val_selection"] > best.get("val_selection", best.get("val_balanced_accuracy", -1.0)):
            best = {**metrics, "epoch": epoch + 1}
            if is_main:
                # A fine-tuned folder keeps its starting folder's model_args (a feature_ensemble's members live there).
                model_args = dict(init_cfg.get("model_args") or {}) if init_cfg else dict(cfg.model_args)
                save_model_folder(out, accelerator.unwrap_model(eval_model()), architecture=cfg.model,
                                  label_names=classes, preprocessing=pre, model_args=model_args,
                                  extras=_extras(cfg, split, best, temperature=1.0, init_weights=provenance))
                plot_confusion(out / "confusion_matrix_val.png", targets.numpy(), logits[0].numpy().argmax(1), classes,
                               f"validation, epoch {epoch + 1} (row-normalised)")
        if is_main:
            write_history(out / HISTORY_FILE, history)
            plot_history(out / "history.png", history)
        save_ckpt(epoch + 1, 0)

    summary = {"best": best, "train_minutes": round((time.time() - train_start) / 60, 1), "epochs_run": len(history),
               "num_processes": accelerator.num_processes, "machine": describe_machine(accelerator.device),
               **({"command": command} if command else {})}  # the card shows how to reproduce the run
    accelerator.wait_for_everyone()  # the model folder is complete before anyone reads it
    summary.update(finalize(cfg, accelerator, split, val_loader) if best["epoch"] > 0 else {})
    if is_main:
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
        if cfg.push_to_hub:
            from ..publish import push_folder

            summary["hub_url"] = push_folder(out, cfg.push_to_hub, private=cfg.hub_private)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


def describe_machine(device: torch.device) -> str:
    """What the training time was measured on, for the model card (times mean little without it)."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"{os.cpu_count()} CPU cores ({platform.machine()}), no GPU, {torch.get_num_threads()} torch threads"


def _extras(cfg: TrainConfig, split: SplitData, best: dict, temperature: float, init_weights: dict) -> dict:
    return {"tta": cfg.tta, "temperature": temperature, "train_config": cfg.to_dict(), "init_weights": init_weights,
            "manifest_sha256": manifest_hash(split.manifest_path) if split.manifest_path.exists() else None,
            "val_metrics": best, "trained_with": "skinlesion", "sources": split.sources,
            "duplicate_screen": split.duplicate_screen, "selection": cfg.selection}


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
        from ..models.card import write_model_card

        write_model_card(out)
    return result


__all__ = ["TrainingSetupError", "DataError", "StepState", "build_step_state", "train", "train_step",
           "prepare_split", "epoch_metrics", "make_loader", "make_accelerator"]
