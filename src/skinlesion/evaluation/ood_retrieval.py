"""The out-of-distribution check and the similar-cases retrieval, scored on an evaluated set.

`ood_report`: the detector's false-flag rate on the labelled set and its flag rate on each folder of
non-dermoscopic images (`folder_features`). `retrieval_report`: the retrieval vote beside the calibrated
softmax (balanced accuracy, melanoma AUC) and precision@k per class, with the evaluated set's own images
and lesions excluded from the index. `ood_retrieval_markdown`: their report.md sections.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..data.table import DataError, LesionTable
from ..inference import calibration, cases
from . import metrics


def folder_features(predictor, folder: str | Path, *, batch_size: int = 32) -> tuple[list[Path], torch.Tensor,
                                                                                      torch.Tensor | None]:
    """Every image under `folder` (recursively) -> (paths, (V=1, N, K) identity-view logits, (N, D) features).

    The Predictor's own decoding and preprocessing, as for an upload; an unreadable file raises naming it.
    """
    from ..imageio import find_images

    paths = find_images(Path(folder))
    if not paths:
        raise DataError(f"{folder}: no image files found")
    return (paths, *image_features(predictor, paths, batch_size=batch_size))


def image_features(predictor, images: Sequence, *, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Image sources (paths or PIL images) -> ((V=1, N, K) identity-view logits, (N, D) features or None).

    Decoded beside the forward as every batch path is (`inference/streaming.py`); an unreadable file raises."""
    from ..inference.streaming import crop_batches

    logit_chunks, feature_chunks = [], []
    for batch in crop_batches(images, predictor.geometry, batch_size=batch_size):
        if batch.errors:
            raise next(iter(batch.errors.values()))
        logits, feats = predictor.forward_views_with_features(predictor.model_input(batch.crops), "none")
        logit_chunks.append(logits)
        feature_chunks.append(feats)
    features = torch.cat(feature_chunks) if feature_chunks[0] is not None else None
    return torch.cat(logit_chunks, dim=1), features


def flag_summary(scores: torch.Tensor, threshold: float) -> dict:
    """How many of these images a detector flags (score below its threshold)."""
    flagged = scores < threshold
    n = int(scores.numel())
    return {"n_images": n, "n_flagged": int(flagged.sum()), "flag_rate": float(flagged.float().mean()) if n else None,
            "score_median": float(scores.median()) if n else None}


def ood_report(predictor, view_logits: torch.Tensor, features: torch.Tensor | None,
               folders: dict[str, tuple[torch.Tensor, torch.Tensor | None]]) -> dict:
    """The detector's false-flag rate on the labelled set and its flag rate on each non-dermoscopic folder.

    `folders`: folder -> ((1, N, K) identity-view logits, (N, D) features) of its images.
    """
    detector = predictor.ood_detector
    if detector is None:
        return {"available": False, "reason": predictor.ood_status}
    scores = predictor.ood_scores(view_logits, features)
    if scores is None:
        return {"available": False, "reason": f"no features: {predictor.features_unavailable}"}
    report = {"available": True, "method": detector.method, "threshold": detector.threshold,
              "quantile": detector.quantile, "labelled_set": flag_summary(scores, detector.threshold),
              "folders": {}}
    for folder, (logits, feats) in folders.items():
        report["folders"][folder] = flag_summary(predictor.ood_scores(logits, feats), detector.threshold)
    return report


def _headline(targets: np.ndarray, probs: np.ndarray, label_names: list[str]) -> dict:
    summary = metrics.classification_summary(targets, probs, label_names)
    mel = summary["per_class"].get("mel") or {}
    return {"balanced_accuracy": summary["balanced_accuracy"], "melanoma_auc": mel.get("auc"),
            "malignant_auc": summary["malignant_auc"], "accuracy": summary["accuracy"]}


def retrieval_report(predictor, view_logits: torch.Tensor, features: torch.Tensor | None, targets: torch.Tensor,
                     table: LesionTable, temperature: float, *, k: int = cases.DEFAULT_K,
                     bootstrap: int = 1000, seed: int = 0) -> dict:
    """The retrieval vote beside the calibrated softmax on a labelled set, and precision@k per class.

    The index's cases sharing an image id or a lesion id with the evaluated set are excluded, so no
    image is its own neighbour (a test split's lesions are not in a train-split index anyway).
    """
    index = predictor.case_index
    if index is None:
        return {"available": False, "reason": predictor.cases_status}
    if features is None:
        return {"available": False, "reason": f"no features: {predictor.features_unavailable}"}
    groups = table.frame["group"].astype(str)
    if "source" in table.frame.columns:
        # load_sources names groups "source:lesion"; an index built from one folder holds the bare lesion ids.
        bare = [g.removeprefix(f"{s}:") for g, s in zip(groups, table.frame["source"].astype(str), strict=True)]
        groups = [*groups, *bare]
    exclude = index.exclusion_mask(table.frame["image_id"].astype(str), groups)
    if bool(exclude.all()):
        return {"available": False, "reason": "every indexed case belongs to the evaluated set"}
    labels = list(predictor.label_names)
    vote_k = predictor.vote_k
    neighbours = index.search(features, max(k, vote_k), exclude=exclude)
    vote = np.array([[v[c] for c in labels] for v in (cases.retrieval_vote(n[:vote_k], labels, prior=index.class_prior)
                                                       for n in neighbours)])
    softmax = calibration.calibrated_probs(view_logits, temperature).numpy()
    y = targets.numpy()
    report = {"available": True, "index_size": len(index), "excluded_from_index": int(exclude.sum()),
              "vote_k": vote_k, "vote": _headline(y, vote, labels), "softmax": _headline(y, softmax, labels),
              "precision_at_k": cases.precision_at_k([labels[i] for i in y], neighbours, k)}
    if bootstrap > 0:  # "within 0.05 of the softmax" is a claim about a gap: give the gap its own interval
        report["vote_minus_softmax"] = metrics.paired_difference_interval(y, softmax, vote, labels,
                                                                          n_resamples=bootstrap, seed=seed)
    return report


def ood_retrieval_markdown(report: dict) -> str:
    """report.md sections for the OOD check and the similar-cases retrieval of one model."""
    lines = []
    name = (report.get("model") or {}).get("name", "")
    ood = report.get("ood") or {}
    if ood:
        lines += ["", f"## {name}: not a dermoscopic image? (out-of-distribution check)", ""]
        if not ood.get("available"):
            lines.append(f"Unavailable: {ood.get('reason')}")
        else:
            lines += [f"Method `{ood['method']}`, threshold {ood['threshold']:.4g} (quantile {ood['quantile']} of "
                      "validation images).", "", "| images | n | flagged | flag rate |", "|---|---|---|---|"]
            rows = [("this labelled set (false flags)", ood["labelled_set"])] + list(ood["folders"].items())
            for images, r in rows:  # not `name`: the retrieval heading below still needs the model's name
                lines.append(f"| {images} | {r['n_images']} | {r['n_flagged']} | {r['flag_rate']:.3f} |")
    retrieval = report.get("retrieval") or {}
    if retrieval:
        lines += ["", f"## {name}: similar cases (retrieval vote)", ""]
        if not retrieval.get("available"):
            lines.append(f"Unavailable: {retrieval.get('reason')}")
        else:
            def fmt(v):
                return "—" if v is None else f"{v:.3f}"

            lines += [f"Index of {retrieval['index_size']} training images ({retrieval['excluded_from_index']} excluded "
                      f"as part of this set); vote over the {retrieval['vote_k']} nearest lesions.", "",
                      "| | balanced accuracy | melanoma AUC | malignant AUC |", "|---|---|---|---|"]
            for answer in ("softmax", "vote"):
                r = retrieval[answer]
                lines.append(f"| {answer} | {fmt(r['balanced_accuracy'])} | {fmt(r['melanoma_auc'])} | "
                             f"{fmt(r['malignant_auc'])} |")
            gap = retrieval.get("vote_minus_softmax")
            if gap and gap.get("difference") is not None and gap.get("low") is not None:
                lines += ["", f"Vote minus softmax, balanced accuracy: {gap['difference']:+.3f} "
                          f"({gap['level']:.0%} paired bootstrap interval {gap['low']:+.3f} to {gap['high']:+.3f}, "
                          f"{gap['n_valid']} resamples)."]
            pk = retrieval["precision_at_k"]
            lines += ["", f"precision@{pk['k']}: macro {fmt(pk['macro'])}; "
                      + ", ".join(f"{c} {fmt(v)}" for c, v in pk["per_class"].items())]
    return "\n".join(lines) + ("\n" if lines else "")
