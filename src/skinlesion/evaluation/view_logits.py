"""Which images are evaluated, and their logits: labels checked, the split chosen, one streamed pass.

`collect_view_logits` streams a table through the Predictor's own eval transform (decoded ahead of the
forward by DataLoader workers, `inference/streaming.py`) and `forward_views_with_features` (the one place
logits are computed) into (V, N, K) view logits and the (N, D) identity-view features; `skinlesion
fit-features` uses it too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import read_manifest, select_split
from ..data.table import DataError, LesionTable
from ..inference import tta
from ..inference.streaming import crop_batches
from ..taxonomy import ALIASES

EVAL_SPLITS = ("test", "val", "all")


class LabelMappingError(DataError):
    """The data has a label the model does not know and `--label-map` does not map."""


@dataclass
class ViewLogits:
    logits: torch.Tensor   # (V, N, K) raw logits, view-major as in tta.TTA_MODES[mode]
    targets: torch.Tensor  # (N,) model class indices
    mode: str
    seconds: float
    features: torch.Tensor | None = None  # (N, D) identity-view penultimate features; None if the model has none


def check_labels(data_labels: list[str], model_labels: list[str], label_map: dict[str, str]) -> None:
    """Raise `LabelMappingError` naming each data label the model lacks, with a --label-map suggestion."""
    missing = sorted(set(data_labels) - set(model_labels))
    if not missing:
        return
    hints = []
    for label in missing:
        alias = ALIASES.get(label.strip().lower())
        if alias in model_labels:
            hints.append(f"{label}={alias}")
    suggestion = f" e.g. --label-map {','.join(hints)}" if hints else " e.g. --label-map SRC=DST,..."
    mapped = f" (after --label-map {label_map})" if label_map else ""
    raise LabelMappingError(
        f"data label(s) {missing}{mapped} are not among the model's labels {model_labels}; map each one onto a "
        f"model label with --label-map SRC=DST,{suggestion}"
    )


def resolve_split(table: LesionTable, split: str | None, manifest_path: Path | None) -> tuple[LesionTable, str]:
    """The rows to evaluate. Data with a manifest: the asked split (default test); other data: all of it."""
    if split is not None and split not in EVAL_SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {list(EVAL_SPLITS)}")
    if manifest_path is None:
        if split in ("test", "val"):
            raise DataError(
                f"--split {split} needs a split manifest, and {table.root} (layout {table.layout}) has none: "
                "pass --manifest CSV, or --split all to evaluate the whole set"
            )
        if table.layout == "ham10000":
            raise DataError(
                f"{table.root} is HAM10000 but no split manifest was found (none in the model folder, no "
                "--manifest); evaluating it whole would score the training images. Pass --manifest, or "
                "--split all if that is really what you want"
            )
        return table, "all"
    chosen = split or "test"
    return select_split(table, read_manifest(manifest_path), chosen), chosen


def collect_view_logits(predictor, table: LesionTable, mode: str, *, batch_size: int, workers: int,
                        progress: bool) -> ViewLogits:
    """Stream the table through the Predictor's eval transform and `forward_views_with_features`
    -> (V, N, K) logits and (N, D) identity-view features. An unreadable image raises DataError naming it."""
    labels = list(predictor.label_names)
    check_labels(sorted(set(table.frame["label"])), labels, {})
    from tqdm.auto import tqdm

    chunks, feature_chunks = [], []
    start = time.perf_counter()
    # Every image is decoded as Predictor.predict decodes an upload (no training-cache downscale) and cut
    # by the Predictor's own geometry; its to-float step runs once per batch in this process.
    batches = crop_batches(table.frame["path"].tolist(), predictor.geometry, batch_size=batch_size, workers=workers)
    for batch in tqdm(batches, total=-(-len(table.frame) // batch_size), desc=f"evaluating ({mode})", unit="batch",
                      disable=not progress):
        if batch.errors:
            raise DataError(str(next(iter(batch.errors.values()))))
        logits, feats = predictor.forward_views_with_features(predictor.model_input(batch.crops), mode)
        chunks.append(logits.float().cpu())  # (V, B, K)
        feature_chunks.append(feats)         # (B, D) or None
    logits = torch.cat(chunks, dim=1)  # (V, N, K)
    features = torch.cat(feature_chunks) if feature_chunks and feature_chunks[0] is not None else None
    n_views = len(tta.get_views(mode))
    if logits.shape[0] != n_views:
        raise RuntimeError(f"forward_views returned {logits.shape[0]} views for TTA {mode!r}, expected {n_views}")
    targets = torch.tensor([labels.index(label) for label in table.frame["label"]], dtype=torch.long)
    return ViewLogits(logits=logits, targets=targets, mode=mode, seconds=time.perf_counter() - start,
                      features=features)
