"""Hyper-parameter search with Optuna: `python train.py --data PATH --tune N [--tune-epochs E] ...`.

Each trial is a short `train()` into `OUTPUT_DIR/trial-NNN/`, all on one split (made once and saved
as `OUTPUT_DIR/split_manifest.csv`), maximising validation balanced accuracy. Searched: learning
rate, weight decay, augmentation strength (RandomResizedCrop `scale_min`, `color_jitter`) and the
loss; every other field comes from the base config. Results: `tuning_results.csv` and `.md`.
Optuna is optional (`pip install "skinlesion[tune]"`).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from ..constants import MANIFEST_FILE
from .config import LOSSES, TrainConfig

RESULTS_CSV = "tuning_results.csv"
RESULTS_MD = "tuning_results.md"
PARAMS = ("lr", "weight_decay", "scale_min", "color_jitter", "loss")


class TuningUnavailableError(ImportError):
    """--tune was asked for but Optuna is not installed."""


def import_optuna():
    try:
        import optuna
    except ImportError as err:
        raise TuningUnavailableError('--tune needs Optuna: pip install "skinlesion[tune]" (or pip install optuna)') \
            from err
    return optuna


def suggest_config(trial, base: TrainConfig, *, epochs: int, manifest: str) -> TrainConfig:
    """The base config with this trial's choices, its own output folder and the shared split."""
    values = base.to_dict()
    values.update(
        lr=trial.suggest_float("lr", 1e-4, 1e-2, log=True),
        weight_decay=trial.suggest_float("weight_decay", 1e-4, 0.2, log=True),
        scale_min=trial.suggest_float("scale_min", 0.2, 0.8),
        color_jitter=trial.suggest_float("color_jitter", 0.0, 0.4),
        loss=trial.suggest_categorical("loss", list(LOSSES)),
        epochs=epochs, manifest=manifest, output_dir=str(Path(base.output_dir) / f"trial-{trial.number:03d}"),
        resume=False, push_to_hub=None,
    )
    return TrainConfig.from_dict(values)


def write_results(out: Path, rows: list[dict[str, Any]]) -> tuple[Path, Path]:
    """The trials, best first, as CSV and as a markdown table."""
    rows = sorted(rows, key=lambda r: -r["val_balanced_accuracy"])
    keys = ["trial", "val_balanced_accuracy", "val_accuracy", "best_epoch", *PARAMS, "minutes", "output_dir"]
    csv_path, md_path = out / RESULTS_CSV, out / RESULTS_MD
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows({k: r[k] for k in keys} for r in rows)

    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(keys[:-1]) + " |", "|" + "---|" * (len(keys) - 1)]
    lines += ["| " + " | ".join(cell(r[k]) for k in keys[:-1]) + " |" for r in rows]
    md_path.write_text("Optuna trials, best validation balanced accuracy first.\n\n" + "\n".join(lines) + "\n")
    return csv_path, md_path


def tune(cfg: TrainConfig, *, trials: int, epochs: int | None = None) -> dict:
    """Run `trials` Optuna trials of `epochs` (default cfg.epochs) each; returns the best and the table paths."""
    optuna = import_optuna()
    from .loop import train
    from .setup import TrainingSetupError, check_output_dir, launched_world_size, prepare_split

    if trials < 1:
        raise ValueError("--tune needs at least one trial")
    if launched_world_size() > 1:
        raise TrainingSetupError("--tune runs its trials one after another in one process: start it with "
                                 "`python train.py --tune N`, not under torchrun or a multi-process launch")
    out = Path(cfg.output_dir)
    check_output_dir(out)
    manifest = cfg.manifest
    if not manifest:  # one split for every trial, so their scores are comparable
        prepare_split(cfg, is_main=True)
        manifest = str(out / MANIFEST_FILE)
    rows: list[dict[str, Any]] = []

    def objective(trial) -> float:
        trial_cfg = suggest_config(trial, cfg, epochs=epochs or cfg.epochs, manifest=manifest)
        summary = train(trial_cfg)
        best = summary["best"]
        rows.append({"trial": trial.number, "val_balanced_accuracy": best["val_balanced_accuracy"],
                     "val_accuracy": best["val_accuracy"], "best_epoch": best["epoch"], **trial.params,
                     "minutes": summary["train_minutes"], "output_dir": trial_cfg.output_dir})
        write_results(out, rows)  # after every trial, so a long search can be read (or killed) half-way
        return best["val_balanced_accuracy"]

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=cfg.seed))
    study.optimize(objective, n_trials=trials)
    csv_path, md_path = write_results(out, rows)
    return {"best_trial": study.best_trial.number, "best_val_balanced_accuracy": study.best_value,
            "best_params": study.best_params,
            "best_output_dir": str(out / f"trial-{study.best_trial.number:03d}"),
            "results_csv": str(csv_path), "results_md": str(md_path)}
