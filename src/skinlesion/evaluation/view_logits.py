"""Which images are evaluated, and their logits: labels checked, the split chosen, one streamed pass.

`collect_view_logits` streams a table through the Predictor's own eval transform and
`forward_views_with_features` (the one place logits are computed) into (V, N, K) view logits and the
(N, D) identity-view features; `skinlesion fit-features` uses it too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..data import LesionDataset, read_manifest, select_split
from ..data.table import DataError, LesionTable
from ..data.transforms import eval_transform
from ..inference import tta
from ..taxonomy import ALIASES

NO_DOWNSCALE = 1 << 30  # a short-side cap no image reaches


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
    -> (V, N, K) logits and (N, D) identity-view features."""
    check_labels(sorted(set(table.frame["label"])), list(predictor.label_names), {})
    # short_side=NO_DOWNSCALE: the dataset's decode-time downscale (a training-cache economy) is switched
    # off, so every image reaches eval_transform exactly as load_rgb decodes it for Predictor.predict.
    dataset = LesionDataset(table, predictor.label_names, eval_transform(predictor.preprocessing), images=None,
                            short_side=NO_DOWNSCALE)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        persistent_workers=False)
    device = next(predictor.loaded.model.parameters()).device
    from tqdm.auto import tqdm

    chunks, feature_chunks, targets = [], [], []
    start = time.perf_counter()
    with torch.inference_mode():
        for x, y in tqdm(loader, desc=f"evaluating ({mode})", unit="batch", disable=not progress):
            logits, feats = predictor.forward_views_with_features(x.to(device), mode)
            chunks.append(logits.float().cpu())  # (V, B, K)
            feature_chunks.append(feats)         # (B, D) or None
            targets.append(y)
    logits = torch.cat(chunks, dim=1)  # (V, N, K)
    features = torch.cat(feature_chunks) if feature_chunks and feature_chunks[0] is not None else None
    n_views = len(tta.get_views(mode))
    if logits.shape[0] != n_views:
        raise RuntimeError(f"forward_views returned {logits.shape[0]} views for TTA {mode!r}, expected {n_views}")
    return ViewLogits(logits=logits, targets=torch.cat(targets).long(), mode=mode,
                      seconds=time.perf_counter() - start, features=features)
