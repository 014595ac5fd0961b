"""Losses for imbalanced lesion classes: label-smoothed CE, class-weighted CE, focal and logit-adjusted CE."""

from __future__ import annotations

import numpy as np
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


class LogitAdjustedLoss(nn.Module):
    """Logit-adjusted cross-entropy (Menon et al., ICLR 2021): CE on logits + tau * log(prior).

    `prior` is the class distribution the loss sees (after any sampler). Adding its log during training
    makes the raw logits estimate the class-balanced posterior, so argmax at inference needs no
    correction, without replaying the rare classes' few images many times an epoch (the class-balanced
    sampler's df/vasc memorisation). With a uniform prior it is plain CE.
    """

    def __init__(self, prior: torch.Tensor, tau: float = 1.0, label_smoothing: float = 0.0):
        super().__init__()
        if prior.ndim != 1 or not bool((prior > 0).all()):
            raise ValueError("logit adjustment needs a positive prior for every class")
        self.register_buffer("offset", tau * torch.log(prior / prior.sum()), persistent=False)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float() + self.offset, target, label_smoothing=self.label_smoothing)


def seen_prior(counts: np.ndarray | torch.Tensor, sampling_power: float | None) -> torch.Tensor:
    """Class shares as the training loop shows them: counts, reweighted by a balanced sampler of that power.

    A sampler weighting each image by count**-power shows class c in proportion to count_c ** (1 - power);
    sampling_power None means plain shuffling. Classes absent from training get a tiny share so the log stays finite.
    """
    counts = torch.as_tensor(np.asarray(counts, dtype=np.float64)).clamp(min=1.0)
    shares = counts if sampling_power is None else counts ** (1.0 - sampling_power)
    return (shares / shares.sum()).float()


def build_loss(name: str, *, class_weights: torch.Tensor | None, label_smoothing: float, focal_gamma: float,
               prior: torch.Tensor | None = None, logit_adjust_tau: float = 1.0) -> nn.Module:
    if name == "ce":
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    if name == "weighted_ce":
        if class_weights is None:
            raise ValueError("weighted_ce needs class weights")
        return nn.CrossEntropyLoss(weight=class_weights, label_smoothing=label_smoothing)
    if name == "focal":
        return FocalLoss(gamma=focal_gamma)
    if name == "logit_adjusted":
        if prior is None:
            raise ValueError("logit_adjusted needs the class prior the training loop shows")
        return LogitAdjustedLoss(prior, tau=logit_adjust_tau, label_smoothing=label_smoothing)
    raise ValueError(f"unknown loss {name!r}")
