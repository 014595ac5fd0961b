"""Validation metrics of one epoch and the number the best epoch maximises (`selection_score`).

Pooled over every validation image and, with several sources, per source (`val_<source>_...`), so the
history shows each clinic and the selection can weigh them (docs/training.md, "Choosing across sources").
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score, roc_auc_score


def selection_score(metrics: dict[str, float], sources: list[str], rule: str) -> float:
    """The number the best epoch maximises: the worst source's validation balanced accuracy, or the pooled one.

    With one source both are the pooled balanced accuracy. Worst-source, because the sources are clinics: an
    epoch that gains on HAM10000's 1,000 validation images while losing another clinic's must not win.
    """
    if rule == "pooled" or len(sources) < 2:
        return metrics["val_balanced_accuracy"]
    return min(metrics[f"val_{s}_balanced_accuracy"] for s in sources)


def epoch_metrics(targets: np.ndarray, logits: np.ndarray, classes: list[str],
                  sources: np.ndarray | None = None, rule: str = "worst_source") -> dict[str, float]:
    """Validation metrics of one epoch, pooled and, with several sources, per source (`val_<source>_...`)."""
    out = _pooled_metrics(targets, logits, classes)
    names = sorted(set(sources.tolist())) if sources is not None else []
    if len(names) > 1:
        for name in names:
            mask = sources == name
            preds = logits[mask].argmax(axis=1)
            # Balanced accuracy over the classes this source has (ISIC 2017: mel, nv, bkl).
            out[f"val_{name}_balanced_accuracy"] = float(balanced_accuracy_score(targets[mask], preds))
            if "mel" in classes:
                mel = classes.index("mel")
                is_mel = targets[mask] == mel
                if 0 < is_mel.sum() < mask.sum():
                    probs = torch.from_numpy(logits[mask]).float().softmax(-1).numpy()
                    out[f"val_{name}_auc_mel"] = float(roc_auc_score(is_mel, probs[:, mel]))
    out["val_selection"] = selection_score(out, names, rule)
    return out


def _pooled_metrics(targets: np.ndarray, logits: np.ndarray, classes: list[str]) -> dict[str, float]:
    preds = logits.argmax(axis=1)
    labels = list(range(len(classes)))
    recalls = recall_score(targets, preds, labels=labels, average=None, zero_division=0)
    out = {
        "val_loss": float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(targets)).item()),
        "val_accuracy": float((preds == targets).mean()),
        "val_balanced_accuracy": float(balanced_accuracy_score(targets, preds)),
        "val_macro_f1": float(f1_score(targets, preds, labels=labels, average="macro", zero_division=0)),
    }
    out.update({f"val_recall_{c}": float(r) for c, r in zip(classes, recalls, strict=True)})
    # Threshold-free and far less noisy than balanced accuracy on a few dozen df/vasc images; logged, not selected on.
    if len(np.unique(targets)) == len(classes):
        probs = torch.from_numpy(logits).float().softmax(-1).numpy()
        out["val_macro_auc"] = float(roc_auc_score(targets, probs, multi_class="ovr", labels=labels))
        if "mel" in classes:
            out["val_auc_mel"] = float(roc_auc_score(targets == classes.index("mel"), probs[:, classes.index("mel")]))
    return out


