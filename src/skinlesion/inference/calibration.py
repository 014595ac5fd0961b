"""Calibration and out-of-distribution scores: small pure functions on logits.

Temperature scaling (Guo et al. 2017) divides logits by one scalar fitted on the validation split;
it changes confidence, never the ranking. The OOD score is the free energy (Liu et al. 2020),
`T * logsumexp(logits / T)`; low values mean the input looks unlike the training images.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits / max(float(temperature), 1e-6)


def calibrated_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, K) logits -> (B, K) probabilities; (V, B, K) TTA view logits -> view-averaged (B, K)."""
    probs = F.softmax(apply_temperature(logits.float(), temperature), dim=-1)
    return probs.mean(dim=0) if probs.dim() == 3 else probs


def energy_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Negative free energy per row; higher = more in-distribution. (V, B, K) logits are view-averaged first."""
    if logits.dim() == 3:
        logits = logits.mean(dim=0)
    t = max(float(temperature), 1e-6)
    return t * torch.logsumexp(logits.float() / t, dim=-1)


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, *, max_iter: int = 200) -> float:
    """Temperature minimising validation NLL of `calibrated_probs` (LBFGS on log T so T stays positive).

    `logits` is (B, K), or (V, B, K) TTA view logits: the temperature is then fitted for the
    view-averaged probabilities the Predictor actually reports.
    """
    logits = logits.detach().float()
    targets = targets.detach().long()
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        if logits.dim() == 3:
            probs = F.softmax(logits / log_t.exp(), dim=-1).mean(dim=0)
            loss = F.nll_loss(probs.clamp_min(1e-12).log(), targets)
        else:
            loss = F.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.exp().clamp(0.05, 20.0).item())


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE with equal-width confidence bins (the common definition; 15 bins as in Guo et al.)."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == targets).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(ece)


def fit_ood_threshold(in_dist_scores: np.ndarray, quantile: float = 0.01) -> float:
    """Threshold below which only `quantile` of validation images fall (1% false alarms by default)."""
    return float(np.quantile(np.asarray(in_dist_scores, dtype=np.float64), quantile))
