"""What the Predictor answers: one image's `Prediction` and its `Explanation` (plain data, JSON-able)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
from PIL import Image


@dataclass
class Prediction:
    """One image's calibrated, TTA-averaged prediction. `to_dict()` is JSON-able (without `model_input`)."""

    label: str                      # class code, e.g. "mel"
    label_name: str                 # full name, e.g. "Melanoma"
    confidence: float               # calibrated probability of `label`
    probs: dict[str, float]         # every class, calibrated (folder temperature) and averaged over views
    top_k: list[tuple[str, float]]  # best classes first
    malignant_prob: float | None    # sum over malignant classes; None if the model has none
    agreement: float                # share of TTA views whose own argmax equals `label`
    view_labels: list[str]          # each view's argmax, in `tta.get_views(tta)` order
    # The detector's score (`ood_method`), higher = more like the training images. Without a detector
    # (ood_method None) it is the energy score, for reference only.
    ood_score: float
    # True when `ood_score` < `ood_threshold`: the image does not look like a dermoscopic image of a skin
    # lesion and the classes are not meaningful. Always False when the check is unavailable: no statistics,
    # no claim (the energy threshold alone flagged none of 32 non-dermoscopic test photos).
    out_of_distribution: bool
    uncertain: bool                 # confidence below extras['uncertain_below'] or agreement < 0.75
    tta: str                        # TTA mode used
    ood_method: str | None = None   # "mahalanobis", "knn", ... (ood.METHODS); None = check unavailable
    ood_threshold: float | None = None
    energy_score: float | None = None  # T * logsumexp(view-averaged logits / T), always computed
    # The k nearest confirmed training cases (distinct lesions, best first) as Case.to_dict() dicts;
    # None when the folder has no case index. `retrieval_vote`: similarity-weighted class shares of the
    # `vote_k` nearest lesions, beside the calibrated softmax `probs`.
    similar_cases: list[dict[str, Any]] | None = None
    retrieval_vote: dict[str, float] | None = None
    model_input: Image.Image | None = field(default=None, repr=False, compare=False)  # what the model saw

    @property
    def ood_available(self) -> bool:
        return self.ood_method is not None

    def to_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it would deep-copy the PIL image only to throw it away.
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model_input"}
        data.update(probs=dict(self.probs), top_k=[[label, p] for label, p in self.top_k],
                    view_labels=list(self.view_labels), ood_available=self.ood_available,
                    similar_cases=None if self.similar_cases is None else [dict(c) for c in self.similar_cases],
                    retrieval_vote=None if self.retrieval_vote is None else dict(self.retrieval_vote))
        return data


@dataclass
class Explanation:
    heatmap: np.ndarray             # (H, W) float32 in [0, 1] at the original image's resolution
    overlay: Image.Image            # original image with the heatmap blended in (crop region only)
    target_label: str               # class the map explains
    method: str                     # CAM method name
    prediction: Prediction
