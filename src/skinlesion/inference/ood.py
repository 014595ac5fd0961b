"""Is this a dermoscopic image at all? Out-of-distribution detectors on the served model's features.

Every detector maps an image to one score, **higher = more like the training images**, and flags the
image when its score is below a threshold chosen on the VALIDATION split (the `quantile` of validation
images that would be flagged). Statistics are fitted on the TRAINING split's penultimate-layer
features (`features.py`: identity view, one forward with the logits). Candidates, compared by
`scripts/measure_ood.py` (README "Not a dermoscopic image?"):

- `energy`: T * logsumexp(logits / T) of the identity view (Liu et al. 2020), softmax-only.
- `mahalanobis`: minus the smallest class-conditional Mahalanobis distance, class means and one shared
  covariance (Lee et al. 2018), Ledoit-Wolf shrinkage so the inverse exists.
- `mahalanobis_l2`: the same on L2-normalised features.
- `knn`: cosine similarity to the k-th nearest training feature (Sun et al. 2022).
- `mahalanobis+knn`: both, each turned into a p-value against its own VALIDATION scores and combined by
  Fisher's product (log p1 + log p2): an image must look typical to both to pass.
- `mahalanobis+layers`: Lee et al.'s feature ensemble. Mahalanobis on the penultimate features, plus one
  Gaussian per tapped block on its spatial mean/std per channel (`features.py` taps, same forward),
  combined by Fisher's product of validation p-values like `mahalanobis+knn`.

Storage: the tensors in `ood_stats.safetensors` (never pickles), with the method, feature dimension and
the sha256 of the weights they were fitted for in its metadata; method, threshold and quantile in
config.json's `skinlesion.ood_detector`. Anything that does not fit together raises `OodStatsError`
naming the file.
"""

from __future__ import annotations

import json
import os
import tempfile
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..models.folder import OOD_STATS_FILE, ModelFolderError
from . import calibration
from .features import l2_normalise

Tensor = torch.Tensor

EXTRAS_KEY = "ood_detector"          # config.json skinlesion section
FORMAT = "skinlesion-ood-stats-1"
METHODS = ("mahalanobis", "mahalanobis_l2", "knn", "mahalanobis+knn", "mahalanobis+layers", "energy")
# The default needs no architecture-specific taps; the shipped folder uses mahalanobis+layers with
# --ood-taps, chosen by measurement (README "Not a dermoscopic image?").
DEFAULT_METHOD = "mahalanobis"
DEFAULT_QUANTILE = 0.01
DEFAULT_KNN_K = 10
COMBINED = ("mahalanobis+knn", "mahalanobis+layers")  # Fisher's product of validation p-values
SCORE_CHUNK = 1024                   # rows scored at once (bounds the (B, D) products)


class OodStatsError(ModelFolderError):
    """The detector statistics are missing, unreadable, or do not belong to this model."""


# ---------------------------------------------------------------------------------------------
# Fitting and scoring: pure functions on tensors
# ---------------------------------------------------------------------------------------------

def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown OOD method {method!r}; choose one of {list(METHODS)}")
    return method


def components(method: str, params: Mapping[str, Any]) -> list[tuple[str, str, slice]]:
    """A combined method's parts: (prefix of its tensors, base method, its columns of the features)."""
    if method == "mahalanobis+knn":
        return [("", "mahalanobis", slice(None)), ("", "knn", slice(None))]
    if method == "mahalanobis+layers":
        start = int(params["penultimate_dim"])
        parts = [("", "mahalanobis", slice(0, start))]
        for i, width in enumerate(params["tap_dims"]):
            parts.append((f"tap{i}_", "mahalanobis", slice(start, start + int(width))))
            start += int(width)
        return parts
    raise ValueError(f"{method!r} is not a combined method")


def _part(stats: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {name[len(prefix):]: t for name, t in stats.items() if name.startswith(prefix)} if prefix else dict(stats)


def fit_stats(method: str, features: Tensor, labels: Tensor, num_classes: int, *, knn_k: int = DEFAULT_KNN_K,
              temperature: float = 1.0, taps: Sequence[str] = (), tap_dims: Sequence[int] = ()
              ) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """TRAINING features (N, D [+ tap statistics]) and class indices (N,) -> (tensors to save, JSON-able params).

    `taps`/`tap_dims` (mahalanobis+layers): the tapped modules and the width of each one's statistics,
    which sit after the D penultimate columns in that order.
    """
    check_method(method)
    if method == "energy":
        return {}, {"temperature": float(temperature)}
    if features.dim() != 2 or features.shape[0] != labels.shape[0]:
        raise ValueError(f"features {tuple(features.shape)} and labels {tuple(labels.shape)} do not match")
    if method == "mahalanobis+layers":
        if not taps or len(taps) != len(tap_dims) or sum(tap_dims) >= features.shape[1]:
            raise ValueError(f"mahalanobis+layers needs taps with their widths inside the {features.shape[1]} "
                             f"feature columns, got taps {list(taps)} widths {list(tap_dims)}")
        params = {"taps": list(taps), "tap_dims": [int(w) for w in tap_dims],
                                  "penultimate_dim": int(features.shape[1] - sum(tap_dims))}
        stats: dict[str, Tensor] = {}
        (_, _, penultimate), *tapped = components(method, params)
        stats, class_params = fit_stats("mahalanobis", features[:, penultimate], labels, num_classes)
        for prefix, _, columns in tapped:
            # A tapped block's statistics are not class features: one Gaussian (one "class") describes them.
            part, _ = fit_stats("mahalanobis", features[:, columns], torch.zeros_like(labels), 1)
            stats.update({prefix + name: t for name, t in part.items()})
        return stats, {**params, **class_params}  # + val_scores from `calibrate`
    if method == "mahalanobis+knn":
        maha, maha_params = fit_stats("mahalanobis", features, labels, num_classes)
        knn, knn_params = fit_stats("knn", features, labels, num_classes, knn_k=knn_k)
        return {**maha, **knn}, {**maha_params, **knn_params}  # + val_scores from `calibrate`
    if method == "knn":
        if knn_k < 1 or knn_k > features.shape[0]:
            raise ValueError(f"knn_k must be between 1 and the number of training images ({features.shape[0]})")
        # fp16 halves the file; cosine similarities of unit vectors lose ~1e-3, far below the margins.
        return {"bank": l2_normalise(features).half().contiguous()}, {"k": int(knn_k)}
    from sklearn.covariance import LedoitWolf

    x = l2_normalise(features) if method == "mahalanobis_l2" else features.float()
    x = x.double().numpy()
    y = labels.long().numpy()
    present = np.unique(y)
    means = np.zeros((num_classes, x.shape[1]))
    for c in present:
        means[c] = x[y == c].mean(axis=0)
    # Shared ("tied") covariance of the class-centred features; Ledoit-Wolf keeps it invertible when
    # D is close to N (1280-d features, a few thousand images).
    centred = x - means[y]
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    return ({"means": torch.from_numpy(means[present]).float().contiguous(),
             "precision": torch.from_numpy(precision).float().contiguous()},
            {"classes": [int(c) for c in present]})


def calibrate(method: str, stats: dict[str, Tensor], params: Mapping[str, Any], val_features: Tensor,
              val_logits: Tensor | None = None) -> dict[str, Tensor]:
    """Add what a method needs from the VALIDATION split besides its threshold: for a combined method,
    each component's sorted validation scores (the reference of its p-values)."""
    if method not in COMBINED:
        return stats
    parts = [score(base, _part(stats, prefix), params, val_features[:, columns], val_logits).sort().values
             for prefix, base, columns in components(method, params)]
    return {**stats, "val_scores": torch.stack(parts).float().contiguous()}  # (parts, n_val)


def p_value(scores: Tensor, reference_sorted: Tensor) -> Tensor:
    """Share of the reference at or below each score, (1 + count) / (n + 1): in (0, 1], small = atypical."""
    below = torch.searchsorted(reference_sorted.float().contiguous(), scores.float().contiguous(), right=True)
    return (1.0 + below.float()) / (reference_sorted.numel() + 1.0)


def score(method: str, stats: Mapping[str, Tensor], params: Mapping[str, Any], features: Tensor | None,
          logits: Tensor | None) -> Tensor:
    """(B, D) identity-view features and (B, K) identity-view logits -> (B,) scores, higher = in-distribution."""
    check_method(method)
    if method in COMBINED:
        if "val_scores" not in stats:
            raise ValueError(f"{method} needs its validation scores: call ood.calibrate after fit_stats")
        if features is None:
            raise ValueError(f"the {method} score needs penultimate-layer features")
        ref = stats["val_scores"]
        return sum(torch.log(p_value(score(base, _part(stats, prefix), params, features[:, columns], logits), ref[i]))
                   for i, (prefix, base, columns) in enumerate(components(method, params)))
    if method == "energy":
        if logits is None:
            raise ValueError("the energy score needs logits")
        return calibration.energy_score(logits.float(), float(params.get("temperature", 1.0)))
    if features is None:
        raise ValueError(f"the {method} score needs penultimate-layer features")
    if method == "knn":
        bank = stats["bank"].float()                                       # (N, D), unit rows
        k = min(int(params["k"]), bank.shape[0])
        sims = l2_normalise(features) @ bank.T                             # (B, N) cosine similarities
        return sims.topk(k, dim=1).values[:, -1]                           # k-th largest
    x = l2_normalise(features) if method == "mahalanobis_l2" else features.float()
    means, precision = stats["means"].float(), stats["precision"].float()  # (C, D), (D, D)
    # One shared precision P, so (x - m)'P(x - m) = x'Px - 2 x'Pm + m'Pm: one (D, D) product per image instead
    # of one per class (7x fewer flops: with three members' 3,840 features the per-class form cost more than
    # the network's forward). Everything is centred on the class means' centroid first, so the three terms are
    # of the distances' size and float32 loses no more than the direct form.
    centre, pm, mpm = _projected_means(means, precision)
    out = []
    for chunk in x.split(SCORE_CHUNK):
        chunk = chunk - centre
        px = chunk @ precision                                             # (b, D)
        dist = (px * chunk).sum(dim=1, keepdim=True) - 2.0 * (chunk @ pm.T) + mpm[None, :]
        out.append(-dist.min(dim=1).values)                                # (b,) nearest class
    return torch.cat(out) if out else torch.zeros(0)


# (centre, P m, m'P m) per loaded precision matrix: a served folder scores one image at a time, and recomputing them
# per request would cost the class-count products the expanded form saves. Keyed by the tensor's id, checked
# by a weak reference that also drops the entry when the statistics are freed (tensors compare elementwise,
# so a WeakKeyDictionary cannot hold them).
_PROJECTED: dict[int, tuple] = {}


def _projected_means(means: Tensor, precision: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(centre, P m, m'P m) with the means centred on `centre`, their centroid."""
    key = id(precision)
    hit = _PROJECTED.get(key)
    if hit is not None and hit[0]() is precision and hit[1] is means:
        return hit[2:]
    centre = means.mean(dim=0)                                             # (D,)
    centred = means - centre
    pm = centred @ precision                                               # (C, D)
    mpm = (pm * centred).sum(dim=1)                                        # (C,)
    _PROJECTED[key] = (weakref.ref(precision, lambda _, key=key: _PROJECTED.pop(key, None)), means, centre, pm, mpm)
    return centre, pm, mpm


def threshold_at(val_scores: Tensor | np.ndarray, quantile: float) -> float:
    """Score below which `quantile` of the validation images fall."""
    if not 0.0 < quantile < 0.5:
        raise ValueError(f"quantile must be in (0, 0.5), got {quantile}")
    return calibration.fit_ood_threshold(np.asarray(val_scores, dtype=np.float64), quantile)


# ---------------------------------------------------------------------------------------------
# The fitted detector, its file and its config entry
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OodDetector:
    """A fitted detector: flags an image when `score(...) < threshold`."""

    method: str
    threshold: float
    feature_dim: int
    stats: dict[str, Tensor] = field(repr=False)
    params: dict[str, Any] = field(default_factory=dict)
    quantile: float | None = None
    weights_sha256: str = ""
    source: str = ""                 # the file it was read from (error messages)

    @property
    def needs_features(self) -> bool:
        return self.method != "energy"

    @property
    def taps(self) -> tuple[str, ...]:
        """Modules whose statistics the features must carry after the penultimate ones (`features.py`)."""
        return tuple(self.params.get("taps", ()))

    def score(self, features: Tensor | None, logits: Tensor | None) -> Tensor:
        return score(self.method, self.stats, self.params, features, logits)

    def check_feature_dim(self, feature_dim: int | None) -> None:
        if self.needs_features and feature_dim != self.feature_dim:
            have = "no penultimate-layer features" if feature_dim is None else f"{feature_dim}-d features"
            raise OodStatsError(f"{self.source}: statistics for {self.feature_dim}-d features, but the model has "
                                f"{have}; refit them with `skinlesion fit-features --model FOLDER --data DATA`")


# A precision matrix is symmetric: the file holds its upper triangle (row-major) under NAME + PACKED, half the
# bytes (three members' 3,840 features made the full float32 matrix 59 MB). Files with the full matrix still load.
PACKED = "_triu"


def pack_symmetric(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for name, tensor in tensors.items():
        if name.endswith("precision") and tensor.dim() == 2 and tensor.shape[0] == tensor.shape[1]:
            out[name + PACKED] = tensor[torch.ones(tensor.shape, dtype=torch.bool).triu()].contiguous()
        else:
            out[name] = tensor
    return out


def unpack_symmetric(tensors: Mapping[str, Tensor], where: str) -> dict[str, Tensor]:
    out = {name: t for name, t in tensors.items() if not name.endswith(PACKED)}
    for name, packed in tensors.items():
        if not name.endswith(PACKED):
            continue
        base, length = name[:-len(PACKED)], packed.numel()
        n = int(round(((8 * length + 1) ** 0.5 - 1) / 2))
        if packed.dim() != 1 or n * (n + 1) // 2 != length or base in out:
            raise OodStatsError(f"{where}: tensor {name!r} is not the upper triangle of one square matrix "
                                f"(shape {tuple(packed.shape)}); refit with `skinlesion fit-features`")
        full = torch.zeros(n, n, dtype=packed.dtype)
        full[torch.ones(n, n, dtype=torch.bool).triu()] = packed
        out[base] = full + full.triu(1).T
    return out


def save_detector(folder: str | Path, detector: OodDetector) -> Path:
    """Write `ood_stats.safetensors` atomically; returns its path."""
    path = Path(folder) / OOD_STATS_FILE
    tensors = pack_symmetric({k: v.detach().cpu().contiguous() for k, v in detector.stats.items()})
    if not tensors:
        tensors = {"empty": torch.zeros(0)}  # safetensors files need at least one tensor
    metadata = {"format": FORMAT, "method": detector.method, "feature_dim": str(detector.feature_dim),
                "weights_sha256": detector.weights_sha256, "params": json.dumps(detector.params)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".ood_stats.", suffix=".safetensors")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def config_entry(detector: OodDetector, **record: Any) -> dict[str, Any]:
    """What config.json's skinlesion.ood_detector holds (the file holds the tensors)."""
    return {"method": detector.method, "threshold": float(detector.threshold), "quantile": detector.quantile,
            "file": OOD_STATS_FILE, "feature_dim": detector.feature_dim, "params": dict(detector.params), **record}


def read_safetensors(path: Path, error: type[ModelFolderError]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file, or `error` naming the file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - safe_open has no items()
    except (SafetensorError, OSError, ValueError) as err:
        raise error(f"{path}: unreadable safetensors file ({err})") from err
    return tensors, metadata


def tensor_widths(method: str, feature_dim: int, params: Mapping[str, Any]) -> dict[str, tuple[int | None, int | None]]:
    """Every tensor a method stores -> its expected (rows, columns); None = any."""
    if method == "energy":
        return {}
    if method in COMBINED:
        parts = components(method, params)
        widths: dict[str, tuple[int | None, int | None]] = {"val_scores": (len(parts), None)}
        for prefix, base, columns in parts:
            width = len(range(feature_dim)[columns])
            widths.update({prefix + name: shape for name, shape in tensor_widths(base, width, params).items()})
        if method == "mahalanobis+layers" and sum(len(range(feature_dim)[c]) for _, _, c in parts) != feature_dim:
            raise ValueError(f"penultimate_dim + tap_dims != feature_dim {feature_dim}")
        return widths
    if method == "knn":
        return {"bank": (None, feature_dim)}
    return {"means": (None, feature_dim), "precision": (feature_dim, feature_dim)}


def load_detector(folder: str | Path, extras: Mapping[str, Any], *, weights_sha256: str | None) -> OodDetector | None:
    """The folder's detector, or None when config.json names none (the check is then unavailable)."""
    entry = extras.get(EXTRAS_KEY)
    if not entry:
        return None
    path = Path(folder) / str(entry.get("file", OOD_STATS_FILE))
    fix = "refit with `skinlesion fit-features --model FOLDER --data DATA`"
    if not path.is_file():
        raise OodStatsError(f"{path}: missing, but config.json's skinlesion.{EXTRAS_KEY} names it; {fix}")
    tensors, meta = read_safetensors(path, OodStatsError)
    tensors = unpack_symmetric(tensors, str(path))
    method = entry.get("method")
    if meta.get("format") != FORMAT:
        raise OodStatsError(f"{path}: not an OOD statistics file (format {meta.get('format')!r}, expected {FORMAT!r})")
    if method not in METHODS or meta.get("method") != method:
        raise OodStatsError(f"{path}: holds {meta.get('method')!r} statistics but config.json asks for {method!r}; {fix}")
    if weights_sha256 is not None and meta.get("weights_sha256") != weights_sha256:
        raise OodStatsError(f"{path}: fitted for other weights than this folder's model.safetensors "
                            f"(stale after retraining?); {fix}")
    try:
        feature_dim = int(meta["feature_dim"])
        params = json.loads(meta.get("params") or "{}")
        threshold = float(entry["threshold"])
    except (KeyError, TypeError, ValueError) as err:
        raise OodStatsError(f"{path}: incomplete metadata or config entry ({err!r}); {fix}") from err
    try:
        widths = tensor_widths(method, feature_dim, params)
    except (KeyError, TypeError, ValueError) as err:
        raise OodStatsError(f"{path}: params {params} do not describe {method!r} statistics ({err!r}); {fix}") from err
    stats = {name: tensors[name] for name in widths if name in tensors}
    missing = [name for name in widths if name not in stats]
    if missing:
        raise OodStatsError(f"{path}: missing tensor(s) {missing} for method {method!r}; {fix}")
    for name, tensor in stats.items():
        if tensor.dim() != 2 or not torch.isfinite(tensor.float()).all():
            raise OodStatsError(f"{path}: tensor {name!r} has shape {tuple(tensor.shape)} (or non-finite values); "
                                f"expected a finite 2-d tensor; {fix}")
        rows, cols = widths[name]
        if (rows is not None and tensor.shape[0] != rows) or (cols is not None and tensor.shape[1] != cols):
            expected = tuple("*" if d is None else d for d in (rows, cols))
            raise OodStatsError(f"{path}: tensor {name!r} has shape {tuple(tensor.shape)}, expected {expected}; {fix}")
    return OodDetector(method=method, threshold=threshold, feature_dim=feature_dim, stats=stats, params=params,
                       quantile=entry.get("quantile"), weights_sha256=meta.get("weights_sha256", ""), source=str(path))
