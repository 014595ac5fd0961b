"""Classification and calibration metrics: pure functions on (N,) targets and (N, K) probabilities.

scikit-learn does the counting (accuracy, F1, confusion matrix, ROC AUC); what it lacks is written
here: scoring a test set that holds only some of the model's classes, the malignant-vs-benign AUC,
the reliability-diagram bins, and seeded percentile-bootstrap intervals.

Class-subset rule (external sets such as ISIC 2017 hold 3 of the 7 HAM10000 classes): metrics are
computed over the classes present in the ground truth only. A prediction is the argmax over those
classes' probabilities (renormalised, which does not change the argmax among them), so a model is
not penalised for a class the set cannot contain. One-vs-rest AUCs use the model's own probability
of each present class, unrenormalised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from ..inference.calibration import expected_calibration_error
from ..taxonomy import malignant_indices

ECE_BINS = 15  # Guo et al. 2017; calibration.expected_calibration_error uses the same bins


@dataclass(frozen=True)
class SubsetScores:
    """Probabilities restricted to the classes present in the ground truth.

    `present` indexes the model's classes; `targets` and `preds` index `present` (0..P-1).
    """

    present: np.ndarray      # (P,) model class indices, ascending
    targets: np.ndarray      # (N,) in 0..P-1
    probs: np.ndarray        # (N, P) the present classes' probabilities, renormalised to sum to 1
    raw_probs: np.ndarray    # (N, P) the same columns of the model's probabilities, not renormalised
    preds: np.ndarray        # (N,) argmax of `probs`, in 0..P-1
    n_model_classes: int     # K

    @property
    def restricted(self) -> bool:
        return bool(self.present.size < self.n_model_classes)


def restrict_to_present(targets: np.ndarray, probs: np.ndarray) -> SubsetScores:
    """Keep the columns of the classes that occur in `targets` (model class indices)."""
    targets = np.asarray(targets, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    present = np.unique(targets)
    raw = probs[:, present]                                        # (N, K) -> (N, P)
    renorm = raw / np.clip(raw.sum(axis=1, keepdims=True), 1e-12, None)
    remap = np.full(probs.shape[1], -1, dtype=np.int64)
    remap[present] = np.arange(present.size)
    return SubsetScores(present=present, targets=remap[targets], probs=renorm, raw_probs=raw,
                        preds=renorm.argmax(axis=1), n_model_classes=probs.shape[1])


def binary_auc(is_positive: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC, or None when only one of the two outcomes occurs (AUC is undefined then)."""
    is_positive = np.asarray(is_positive, dtype=bool)
    if is_positive.all() or not is_positive.any():
        return None
    return float(roc_auc_score(is_positive, scores))


def per_class_auc(targets: np.ndarray, scores: np.ndarray) -> list[float | None]:
    """One-vs-rest AUC for each column of `scores` (N, P); `targets` index the columns."""
    return [binary_auc(targets == c, scores[:, c]) for c in range(scores.shape[1])]


def macro_auc(targets: np.ndarray, scores: np.ndarray) -> float | None:
    """Unweighted mean of the one-vs-rest AUCs (sklearn's 'ovr' + 'macro'), None with < 2 classes.

    Written as the mean of binary AUCs because sklearn's multiclass path insists that the scores
    sum to one, which the unrenormalised subset of a model's probabilities does not.
    """
    aucs = per_class_auc(targets, scores)
    if len(aucs) < 2 or any(a is None for a in aucs):
        return None
    return float(np.mean(aucs))


def malignant_auc(targets: np.ndarray, probs: np.ndarray, label_names: Sequence[str]) -> float | None:
    """AUC of 'malignant (mel/bcc/akiec) vs benign' scored by the model's total malignant probability.

    `targets` index `label_names`; all K model columns are used (a 7-class model's bcc probability
    is malignant suspicion even on a set without bcc).
    """
    idx = malignant_indices(list(label_names))
    if not idx:
        return None
    is_malignant = np.isin(np.asarray(targets), idx)
    return binary_auc(is_malignant, np.asarray(probs)[:, idx].sum(axis=1))


def pairwise_auc(targets: np.ndarray, scores: np.ndarray, positive: int, names: Sequence[str]) -> dict[str, float | None]:
    """`positive`'s score ranked against each other class alone: {name: AUC of positive vs that class}. Says which
    class a one-vs-rest AUC loses to (on ISIC 2017 the melanoma AUC is lost to nevi, not to keratoses)."""
    targets, scores = np.asarray(targets), np.asarray(scores)
    out = {}
    for c, name in enumerate(names):
        if c != positive:
            pair = (targets == positive) | (targets == c)
            out[name] = binary_auc(targets[pair] == positive, scores[pair])
    return out


def sensitivity_specificity(targets: np.ndarray, preds: np.ndarray, positive: int) -> dict[str, float | None]:
    """Sensitivity (recall of `positive`) and specificity (recall of everything else) for hard predictions."""
    targets, preds = np.asarray(targets), np.asarray(preds)
    pos, neg = targets == positive, targets != positive
    return {
        "sensitivity": float((preds[pos] == positive).mean()) if pos.any() else None,
        "specificity": float((preds[neg] != positive).mean()) if neg.any() else None,
        "n_positive": int(pos.sum()),
        "n_negative": int(neg.sum()),
    }


def classification_summary(targets: np.ndarray, probs: np.ndarray, label_names: Sequence[str]) -> dict:
    """Every headline metric for model probabilities (N, K) and targets in model class indices (N,)."""
    label_names = list(label_names)
    targets = np.asarray(targets, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    sub = restrict_to_present(targets, probs)
    present_names = [label_names[i] for i in sub.present]
    labels = np.arange(sub.present.size)
    prec, rec, f1, support = precision_recall_fscore_support(sub.targets, sub.preds, labels=labels, zero_division=0)
    aucs = per_class_auc(sub.targets, sub.raw_probs)
    summary = {
        "n_images": int(targets.size),
        "classes": present_names,
        "accuracy": float(accuracy_score(sub.targets, sub.preds)),
        "balanced_accuracy": float(balanced_accuracy_score(sub.targets, sub.preds)),
        "auc_ovr_macro": macro_auc(sub.targets, sub.raw_probs),
        "malignant_auc": malignant_auc(targets, probs, label_names),
        "per_class": {
            name: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
                   "support": int(support[i]), "auc": aucs[i]}
            for i, name in enumerate(present_names)
        },
        "confusion_matrix": confusion_matrix(sub.targets, sub.preds, labels=labels).tolist(),
    }
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(sub.targets, sub.preds, labels=labels, average=avg,
                                                     zero_division=0)
        summary.update({f"{avg}_precision": float(p), f"{avg}_recall": float(r), f"{avg}_f1": float(f)})
    if "mel" in present_names:
        mel = present_names.index("mel")
        summary["melanoma"] = sensitivity_specificity(sub.targets, sub.preds, mel)
        summary["melanoma"]["auc_against"] = pairwise_auc(sub.targets, sub.raw_probs[:, mel], mel, present_names)
    else:
        summary["melanoma"] = None
    summary["ece"] = expected_calibration_error(probs, targets, n_bins=ECE_BINS)
    if sub.restricted:
        # The argmax over all the model's classes, for readers who want the unforgiving number too.
        summary["accuracy_all_classes"] = float(accuracy_score(targets, probs.argmax(axis=1)))
    return summary


def reliability_bins(probs: np.ndarray, targets: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, list]:
    """Per confidence bin: edges, mean confidence, accuracy and count (the reliability diagram's data).

    Bins match calibration.expected_calibration_error: equal width, (lo, hi], the first closed at 0.
    Empty bins have None for confidence and accuracy.
    """
    probs = np.asarray(probs, dtype=np.float64)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(targets)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    out: dict[str, list] = {"lower": [], "upper": [], "confidence": [], "accuracy": [], "count": []}
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        out["lower"].append(float(lo))
        out["upper"].append(float(hi))
        out["count"].append(int(in_bin.sum()))
        out["confidence"].append(float(conf[in_bin].mean()) if in_bin.any() else None)
        out["accuracy"].append(float(correct[in_bin].mean()) if in_bin.any() else None)
    return out


def roc_curves(targets: np.ndarray, probs: np.ndarray, label_names: Sequence[str]) -> dict[str, dict]:
    """One-vs-rest ROC points per present class ({label: {fpr, tpr, auc}}), plus 'malignant' if defined."""
    sub = restrict_to_present(np.asarray(targets), np.asarray(probs))
    curves: dict[str, dict] = {}
    for col, cls in enumerate(sub.present):
        pos = sub.targets == col
        if pos.all() or not pos.any():
            continue
        fpr, tpr, _ = roc_curve(pos, sub.raw_probs[:, col])
        curves[label_names[cls]] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(),
                                    "auc": float(roc_auc_score(pos, sub.raw_probs[:, col]))}
    idx = malignant_indices(list(label_names))
    is_mal = np.isin(np.asarray(targets), idx)
    if idx and is_mal.any() and not is_mal.all():
        score = np.asarray(probs)[:, idx].sum(axis=1)
        fpr, tpr, _ = roc_curve(is_mal, score)
        curves["malignant"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": float(roc_auc_score(is_mal, score))}
    return curves


BOOTSTRAP_METRICS = ("balanced_accuracy", "auc_ovr_macro", "malignant_auc")


def bootstrap_intervals(targets: np.ndarray, probs: np.ndarray, label_names: Sequence[str], *,
                        n_resamples: int = 1000, seed: int = 0, level: float = 0.95,
                        metrics: Sequence[str] = BOOTSTRAP_METRICS) -> dict[str, dict]:
    """Percentile-bootstrap intervals: resample images with replacement, recompute, take quantiles.

    The classes present are fixed by the full set (a resample that happens to miss a rare class
    still scores it as present), so every resample answers the same question. Resamples where a
    metric is undefined (an AUC with no positives) are skipped and counted.
    """
    targets = np.asarray(targets, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    unknown = sorted(set(metrics) - set(BOOTSTRAP_METRICS))
    if unknown:
        raise KeyError(f"no bootstrap rule for metric(s) {unknown}; choose from {list(BOOTSTRAP_METRICS)}")
    rng = np.random.default_rng(seed)
    present = np.unique(targets)
    n = targets.size
    values: dict[str, list[float]] = {m: [] for m in metrics}
    for _ in range(n_resamples):
        idx = rng.integers(0, n, size=n)
        t, p = targets[idx], probs[idx]
        for name in metrics:
            value = _resample_metric(name, t, p, label_names, present)
            if value is not None:
                values[name].append(value)
    return {name: {**_percentile_interval(vals, level), "level": level, "n_resamples": n_resamples,
                   "n_valid": len(vals)} for name, vals in values.items()}


def _percentile_interval(values: Sequence[float], level: float) -> dict:
    """{"low", "high"}: the central `level` share of bootstrap values (None when there are none)."""
    if not len(values):
        return {"low": None, "high": None}
    tail = (1.0 - level) / 2.0
    return {"low": float(np.quantile(values, tail)), "high": float(np.quantile(values, 1 - tail))}


def paired_difference_interval(targets: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray,
                               label_names: Sequence[str], metric: str = "balanced_accuracy", *,
                               n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """metric(b) - metric(a) on the same images, with a paired percentile-bootstrap interval.

    Both predictions are scored on each resample's same images, so the interval is for the gap itself;
    two separate intervals would overstate its uncertainty (the two errors are strongly correlated).
    """
    targets = np.asarray(targets, dtype=np.int64)
    probs_a, probs_b = np.asarray(probs_a, dtype=np.float64), np.asarray(probs_b, dtype=np.float64)
    if metric not in BOOTSTRAP_METRICS:
        raise KeyError(f"no bootstrap rule for metric {metric!r}; choose from {list(BOOTSTRAP_METRICS)}")
    present = np.unique(targets)

    def gap(idx: np.ndarray) -> float | None:
        a = _resample_metric(metric, targets[idx], probs_a[idx], label_names, present)
        b = _resample_metric(metric, targets[idx], probs_b[idx], label_names, present)
        return None if a is None or b is None else b - a

    rng = np.random.default_rng(seed)
    gaps = [g for g in (gap(rng.integers(0, targets.size, size=targets.size)) for _ in range(n_resamples))
            if g is not None]
    return {"metric": metric, "difference": gap(np.arange(targets.size)), **_percentile_interval(gaps, level),
            "level": level, "n_resamples": n_resamples, "n_valid": len(gaps)}


def rank_aucs(is_positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Column-wise ROC AUC by the Mann-Whitney rank sum (ties count half): (N, C) bools + scores -> (C,).

    Equal to sklearn's roc_auc_score, about a hundred times faster on small inputs, which is what a
    thousand bootstrap resamples need. Undefined columns (no positive or no negative) are NaN.
    """
    from scipy.stats import rankdata

    is_positive = np.asarray(is_positive, dtype=bool)
    ranks = rankdata(np.asarray(scores, dtype=np.float64), axis=0)       # average ranks for ties
    n_pos = is_positive.sum(axis=0)
    n_neg = is_positive.shape[0] - n_pos
    u = (ranks * is_positive).sum(axis=0) - n_pos * (n_pos + 1) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def _resample_metric(name: str, targets: np.ndarray, probs: np.ndarray, label_names: Sequence[str],
                     present: np.ndarray) -> float | None:
    if name == "malignant_auc":
        idx = malignant_indices(list(label_names))
        if not idx:
            return None
        auc = rank_aucs(np.isin(targets, idx)[:, None], probs[:, idx].sum(axis=1, keepdims=True))[0]
        return None if np.isnan(auc) else float(auc)
    # Restrict to the classes of the full set, not of the resample.
    remap = np.full(probs.shape[1], -1, dtype=np.int64)
    remap[present] = np.arange(present.size)
    sub_t, raw = remap[targets], probs[:, present]
    if name == "balanced_accuracy":
        preds = raw.argmax(axis=1)
        # sklearn's balanced accuracy averages recall over classes in y_true; a resample missing a
        # class would silently change the average, so compute recall per present class directly.
        recalls = [(preds[sub_t == c] == c).mean() for c in range(present.size) if (sub_t == c).any()]
        return float(np.mean(recalls)) if len(recalls) == present.size else None
    if name == "auc_ovr_macro":
        if present.size < 2:
            return None
        aucs = rank_aucs(sub_t[:, None] == np.arange(present.size)[None, :], raw)
        return None if np.isnan(aucs).any() else float(aucs.mean())
    raise KeyError(name)
