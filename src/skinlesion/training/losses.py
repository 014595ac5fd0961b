"""Losses for imbalanced lesion classes: label-smoothed CE, class-weighted CE and focal loss."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): down-weights easy examples by (1 - p_t) ** gamma.

    With gamma=0 and no weights it equals cross-entropy. `weight` optionally adds per-class alpha.
    """

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", weight if weight is not None else None, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=-1)             # (B, K)
        log_pt = log_p.gather(1, target[:, None]).squeeze(1)       # (B,)
        loss = -((1.0 - log_pt.exp()) ** self.gamma) * log_pt
        if self.weight is not None:
            w = self.weight[target]
            return (loss * w).sum() / w.sum()
        return loss.mean()


def build_loss(name: str, *, class_weights: torch.Tensor | None, label_smoothing: float, focal_gamma: float) -> nn.Module:
    if name == "ce":
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    if name == "weighted_ce":
        if class_weights is None:
            raise ValueError("weighted_ce needs class weights")
        return nn.CrossEntropyLoss(weight=class_weights, label_smoothing=label_smoothing)
    if name == "focal":
        return FocalLoss(gamma=focal_gamma)
    raise ValueError(f"unknown loss {name!r}")
