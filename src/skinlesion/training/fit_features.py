"""After training, fit what the features serve (`skinlesion fit-features --model FOLDER --data DATA`).

One pass over the TRAINING split's penultimate-layer features (identity view, one forward with the
logits, `features.py`) serves both:
- the out-of-distribution detector (`ood.py`): statistics fitted on the training split, threshold at
  the `--ood-quantile` of the VALIDATION split's scores -> `ood_stats.safetensors` + config.json
  `skinlesion.ood_detector`;
- the similar-cases index (`cases.py`): the training images' reduced, normalised features with image id,
  label, dx_type and lesion id -> `case_index.safetensors` + config.json `skinlesion.case_index`.

The split comes from the model folder's own split manifest (or `--manifest`, which must be the same
file: an index built from another split would show the model's test images as "similar cases").
Both files record the sha256 of the weights, so they are refused after retraining: rerun this.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..constants import MANIFEST_FILE, MODEL_WEIGHTS_FILE
from ..data import DataError, LesionTable, read_manifest, select_split
from ..data.layouts import find_ham_csv
from ..data.sources import load_sources
from ..data.splits import manifest_hash
from ..inference import case_thumbnails, cases, ood
from ..models.folder import CASE_THUMBNAILS_FILE, ModelFolderError, file_sha256, update_extras


@dataclass(frozen=True)
class FitFeaturesConfig:
    """Everything one fitting run needs; built once from the command line."""

    model: str                              # local model folder (written into)
    data: tuple[str, ...]                   # the training sources (each PATH[,name=,layout=,split=]; data/sources.py)
    manifest: str | None = None             # None = the model folder's split_manifest.csv
    layout: str | None = None               # None = auto-detect
    label_map: dict[str, str] = field(default_factory=dict)
    fit_ood: bool = True                    # fit the OOD detector
    ood_method: str = ood.DEFAULT_METHOD    # one of ood.METHODS
    ood_quantile: float = ood.DEFAULT_QUANTILE  # share of validation images the threshold flags
    knn_k: int = ood.DEFAULT_KNN_K          # k of the knn method
    ood_taps: tuple[str, ...] = ()          # mahalanobis+layers: modules whose statistics it models
    build_index: bool = True                # build the case index
    thumbnails: bool = True                 # ship small pictures of the indexed images with it (case_thumbnails.py)
    index_dims: int = cases.DEFAULT_DIMS    # PCA dimensions of the index vectors
    batch_size: int = 64
    workers: int = 2                        # DataLoader processes decoding images
    limit: int = 0                          # at most this many images per split, seeded (0 = all): quick trials
    seed: int = 0
    save_features: str | None = None        # .npz of the train features (no pixels), for analysis
    progress: bool = True
    command: str | None = None              # the command line, recorded in config.json

    def __post_init__(self) -> None:
        if isinstance(self.data, str):  # one source given as a plain path
            object.__setattr__(self, "data", (self.data,))


@dataclass
class SplitFeatures:
    features: torch.Tensor     # (N, D) identity-view penultimate features
    logits: torch.Tensor       # (N, K) identity-view logits
    targets: torch.Tensor      # (N,) model class indices
    frame: pd.DataFrame        # the table rows, in the same order


def subsample(table: LesionTable, limit: int, seed: int) -> LesionTable:
    if limit <= 0 or len(table.frame) <= limit:
        return table
    rows = np.sort(np.random.default_rng(seed).choice(len(table.frame), size=limit, replace=False))
    return LesionTable(frame=table.frame.iloc[rows].reset_index(drop=True), layout=table.layout, root=table.root,
                       problems=list(table.problems), counters=dict(table.counters), sources=list(table.sources))


def split_features(predictor, table: LesionTable, cfg: FitFeaturesConfig) -> SplitFeatures:
    from ..evaluation.view_logits import collect_view_logits

    out = collect_view_logits(predictor, table, "none", batch_size=cfg.batch_size, workers=cfg.workers,
                              progress=cfg.progress)
    if out.features is None:
        raise ModelFolderError(f"{cfg.model}: the model has no penultimate-layer features "
                               f"({predictor.features_unavailable})")
    return SplitFeatures(features=out.features, logits=out.logits[0], targets=out.targets, frame=table.frame)


def dx_types(table: LesionTable) -> list[str | None]:
    """HAM10000's `dx_type` per row (histo, follow_up, consensus, confocal), read from each HAM10000 source's
    metadata CSV; None for other layouts, which do not record how the diagnosis was confirmed."""
    by_id: dict[str, str] = {}
    roots = [info["root"] for info in table.sources if info["layout"] == "ham10000"] or \
        ([table.root] if table.layout == "ham10000" else [])
    for root in roots:
        csv_path = find_ham_csv(Path(root))
        if csv_path is None:
            continue
        meta = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
        if "dx_type" in meta.columns:
            by_id.update(zip(meta["image_id"].str.strip(), meta["dx_type"].str.strip(), strict=True))
    return [by_id.get(str(i)) or None for i in table.frame["image_id"]]


def lesion_id(group: object, image_id: object) -> str | None:
    """A table group as the index shows it: the source's own lesion id (`load_sources` prefixes `source:`),
    or None where the source has no lesion ids (the group is then the image itself)."""
    if group is None or (isinstance(group, float) and np.isnan(group)):
        return None
    own = str(group).split(":", 1)[-1]
    return None if own == str(image_id) else own


def resolve_manifest(folder: Path, manifest: str | None, extras: dict) -> tuple[Path, str]:
    """The manifest to split with and its sha256; refuses one that is not the model's own."""
    path = Path(manifest) if manifest else folder / MANIFEST_FILE
    if not path.is_file():
        raise DataError(f"{path}: split manifest not found; the model folder should hold the {MANIFEST_FILE} it "
                        "was trained with (or pass --manifest)")
    digest = manifest_hash(path)
    recorded = extras.get("manifest_sha256")
    if recorded is None and path != folder / MANIFEST_FILE and (folder / MANIFEST_FILE).is_file():
        recorded = manifest_hash(folder / MANIFEST_FILE)
    if recorded is not None and recorded != digest:
        raise cases.ManifestMismatchError(
            f"{path} (sha256 {digest[:12]}) is not the split manifest {folder} was trained with ({recorded[:12]}); "
            "images from a model folder's index must never be shown for a model trained on another split")
    return path, digest


def run(cfg: FitFeaturesConfig) -> dict:
    """Fit the detector and/or build the index; write them into the model folder; return a summary."""
    from ..inference.predictor import Predictor

    if not (cfg.fit_ood or cfg.build_index):
        raise ValueError("nothing to do: both --no-ood and --no-index were given")
    ood.check_method(cfg.ood_method)
    folder = Path(cfg.model)
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: not a local model folder (skinlesion fit-features writes into it)")
    started = time.perf_counter()
    if (cfg.ood_method == "mahalanobis+layers") != bool(cfg.ood_taps):
        raise ValueError("--ood-taps (module names, e.g. `blocks.5 blocks.6` for EfficientNet/MobileNet, `layer3 "
                         "layer4` for ResNet) goes with --ood-method mahalanobis+layers, and only with it")
    # The fastest variant whose features equal the eager model's (tests/test_inference_variants.py): onnxruntime
    # when the folder's model.onnx carries exactly these taps, else PyTorch channels_last.
    predictor = Predictor.from_pretrained(folder, tta="none", taps=cfg.ood_taps, feature_extras=False)
    if predictor.features_unavailable is not None:
        raise ModelFolderError(f"{folder}: no penultimate-layer features ({predictor.features_unavailable})")
    weights_sha = file_sha256(folder / MODEL_WEIGHTS_FILE)
    manifest_path, manifest_sha = resolve_manifest(folder, cfg.manifest, predictor.loaded.extras)
    table = load_sources(list(cfg.data), layout=cfg.layout, label_map=cfg.label_map)
    manifest = read_manifest(manifest_path)
    train = split_features(predictor, subsample(select_split(table, manifest, "train"), cfg.limit, cfg.seed), cfg)
    summary: dict = {"model": str(folder), "data": list(cfg.data), "manifest": str(manifest_path),
                     "manifest_sha256": manifest_sha, "feature_dim": int(train.features.shape[1]),
                     "n_train": int(train.features.shape[0]), "limit": cfg.limit}
    labels = list(predictor.label_names)
    record = {"fitted_on": {"train": int(train.features.shape[0])}, "manifest_sha256": manifest_sha,
              "command": cfg.command}
    if cfg.fit_ood:
        val = split_features(predictor, subsample(select_split(table, manifest, "val"), cfg.limit, cfg.seed), cfg)
        widths = predictor.feature_widths[1:]  # each tap's columns after the penultimate ones
        stats, params = ood.fit_stats(cfg.ood_method, train.features, train.targets, len(labels), knn_k=cfg.knn_k,
                                      temperature=predictor.loaded.temperature, taps=cfg.ood_taps, tap_dims=widths)
        stats = ood.calibrate(cfg.ood_method, stats, params, val.features, val.logits)
        val_scores = ood.score(cfg.ood_method, stats, params, val.features, val.logits)
        detector = ood.OodDetector(method=cfg.ood_method, threshold=ood.threshold_at(val_scores, cfg.ood_quantile),
                                   feature_dim=int(train.features.shape[1]), stats=stats, params=params,
                                   quantile=cfg.ood_quantile, weights_sha256=weights_sha)
        train_scores = detector.score(train.features, train.logits)
        ood.save_detector(folder, detector)
        entry = ood.config_entry(detector, **{**record, "fitted_on": {"train": int(train.features.shape[0]),
                                                                      "val": int(val.features.shape[0])}},
                                 val_flag_rate=float((val_scores < detector.threshold).float().mean()),
                                 train_flag_rate=float((train_scores < detector.threshold).float().mean()))
        update_extras(folder, **{ood.EXTRAS_KEY: entry})
        summary["ood"] = entry
    if cfg.build_index:
        # The index holds the penultimate features only (the OOD taps' statistics follow them).
        index = cases.build_index(train.features[:, :predictor.feature_dim], image_ids=[str(i) for i in train.frame["image_id"]],
                                  labels=[str(x) for x in train.frame["label"]], dx_types=dx_types(
                                      LesionTable(frame=train.frame, layout=table.layout, root=table.root,
                                                  sources=list(table.sources))),
                                  lesion_ids=[lesion_id(g, i) for g, i in zip(train.frame["group"], train.frame["image_id"],
                                                                              strict=True)],
                                  manifest_sha256=manifest_sha, weights_sha256=weights_sha, dims=cfg.index_dims,
                                  sources=[str(x) for x in train.frame["source"]])
        index.source = str(folder / cases.CASE_INDEX_FILE)
        path = cases.save_index(folder, index)
        thumbs = {}
        if cfg.thumbnails:
            thumbs_path = case_thumbnails.save_thumbnails(folder, index.image_ids, train.frame["path"].tolist(),
                                                          manifest_sha256=manifest_sha, progress=cfg.progress)
            thumbs = {"thumbnails": {"file": thumbs_path.name, "bytes": thumbs_path.stat().st_size,
                                     "side": case_thumbnails.DEFAULT_SIDE}}
        else:
            (folder / CASE_THUMBNAILS_FILE).unlink(missing_ok=True)  # never leave pictures of another index
        entry = cases.config_entry(index, **record, bytes=path.stat().st_size, **thumbs)
        update_extras(folder, **{cases.EXTRAS_KEY: entry})
        summary["case_index"] = entry
    if cfg.save_features:
        out = Path(cfg.save_features)
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out, train_features=train.features.numpy(), train_logits=train.logits.numpy(),
                            train_targets=train.targets.numpy(),
                            train_image_ids=np.asarray(train.frame["image_id"], dtype=str))
        summary["saved_features"] = str(out)
    summary["elapsed_seconds"] = round(time.perf_counter() - started, 1)
    return summary
