"""Predict a folder of images into a CSV (`skinlesion predict`).

Images are found recursively, decoded by DataLoader workers while the previous batch is predicted
(`streaming.py`), and predicted in batches of TTA views on the variant the Predictor chose at load. An
unreadable file stops the run with its name, unless `--skip-bad`: then it still gets a row, with its
reason in the `error` column and empty prediction columns, so nothing vanishes.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..imageio import find_images
from .predictor import Prediction, Predictor
from .streaming import DEFAULT_WORKERS, crop_batches
from .variants import AUTO


@dataclass(frozen=True)
class PredictConfig:
    model: str
    images: Path
    out: Path
    tta: str | None = None          # None: the model folder's own TTA mode
    batch_size: int = 32
    skip_bad: bool = False          # record unreadable files in the `error` column instead of stopping
    workers: int = DEFAULT_WORKERS  # DataLoader processes decoding ahead of the forward (0: in this process)
    progress: bool = True
    revision: str | None = None
    variant: str = AUTO             # inference variant (predictor.VARIANTS); auto: the fastest available


def csv_columns(label_names: Sequence[str]) -> list[str]:
    return ["path", "label", "label_name", "confidence", "malignant_prob", "agreement", "uncertain",
            "ood_score", "out_of_distribution", *[f"prob_{n}" for n in label_names],
            "ood_method", "ood_threshold", "nearest_cases", "error"]


def prediction_row(path: str, pred: Prediction) -> dict:
    row = {"path": path, "label": pred.label, "label_name": pred.label_name, "confidence": f"{pred.confidence:.6f}",
           "malignant_prob": "" if pred.malignant_prob is None else f"{pred.malignant_prob:.6f}",
           "agreement": f"{pred.agreement:.4f}", "uncertain": pred.uncertain, "ood_score": f"{pred.ood_score:.6f}",
           "out_of_distribution": pred.out_of_distribution, "error": "",
           # Empty when the model folder has no OOD statistics / case index (`skinlesion fit-features`).
           "ood_method": pred.ood_method or "",
           "ood_threshold": "" if pred.ood_threshold is None else f"{pred.ood_threshold:.6f}",
           "nearest_cases": " ".join(f"{c['image_id']}:{c['label']}:{c['similarity']:.3f}"
                                     for c in pred.similar_cases or [])}
    row.update({f"prob_{n}": f"{p:.6f}" for n, p in pred.probs.items()})
    return row


def predict_rows(predictor: Predictor, paths: Sequence[Path], root: Path, cfg: PredictConfig) -> Iterator[dict]:
    """One CSV row per path, in order; batches of `cfg.batch_size` images (x TTA views) per forward."""
    for batch in crop_batches(paths, predictor.geometry, batch_size=cfg.batch_size, workers=cfg.workers):
        preds = (predictor.predict_tensors(predictor.model_input(batch.crops), tta=cfg.tta)
                 if batch.indices else [])
        by_index = dict(zip(batch.indices, preds, strict=True))
        for i in sorted([*batch.indices, *batch.errors]):
            rel = str(paths[i].relative_to(root))
            if i in by_index:
                yield prediction_row(rel, by_index[i])
            elif cfg.skip_bad:
                yield {"path": rel, "error": str(batch.errors[i])}
            else:
                raise batch.errors[i]


def run(cfg: PredictConfig) -> dict:
    """Write the CSV; returns counts. The CSV is written to a temporary name and renamed when complete."""
    paths = find_images(cfg.images)
    if not paths:
        raise FileNotFoundError(f"{cfg.images}: no image files found")
    predictor = Predictor.from_pretrained(cfg.model, revision=cfg.revision, tta=cfg.tta, variant=cfg.variant)
    columns = csv_columns(predictor.label_names)
    rows: Iterator[dict] = predict_rows(predictor, paths, cfg.images, cfg)
    if cfg.progress:
        from tqdm.auto import tqdm

        rows = tqdm(rows, total=len(paths), desc="predicting", unit="img")
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = cfg.out.with_name(cfg.out.name + ".partial")
    n_bad = 0
    try:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            for row in rows:
                n_bad += bool(row["error"])
                writer.writerow(row)
        tmp.replace(cfg.out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"images": len(paths), "predicted": len(paths) - n_bad, "unreadable": n_bad, "out": str(cfg.out),
            "tta": predictor.tta, "backend": predictor.backend, "variant": predictor.variant}
