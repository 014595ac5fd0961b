"""Losses: focal loss against cross-entropy, class weights in weighted CE."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from skinlesion.training.losses import FocalLoss, build_loss


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 7, generator=g) * 3, torch.randint(0, 7, (16,), generator=g)


def test_focal_loss_with_gamma_zero_is_cross_entropy(batch):
    logits, target = batch
    torch.testing.assert_close(FocalLoss(gamma=0.0)(logits, target), F.cross_entropy(logits, target))


def test_focal_loss_discounts_easy_examples(batch):
    _, target = batch
    easy = F.one_hot(target, 7).float() * 6.0  # p_t ~ 0.985 for every row
    focal, ce = FocalLoss(gamma=2.0)(easy, target), F.cross_entropy(easy, target)
    assert focal < ce * 0.01  # (1 - p_t)^2 ~ 2e-4
    # A hard example (the true class gets the lowest logit) keeps most of its CE.
    hard = -easy
    assert FocalLoss(gamma=2.0)(hard, target) > 0.9 * F.cross_entropy(hard, target)


def test_weighted_ce_uses_class_weights(batch):
    logits, target = batch
    weights = torch.linspace(0.2, 3.0, 7)
    loss = build_loss("weighted_ce", class_weights=weights, label_smoothing=0.0, focal_gamma=2.0)
    per_sample = F.cross_entropy(logits, target, reduction="none")
    expected = (per_sample * weights[target]).sum() / weights[target].sum()
    torch.testing.assert_close(loss(logits, target), expected)
    unweighted = build_loss("ce", class_weights=None, label_smoothing=0.0, focal_gamma=2.0)(logits, target)
    assert not torch.isclose(loss(logits, target), unweighted)


def test_weighted_focal_loss_uses_weights(batch):
    logits, target = batch
    weights = torch.zeros(7)
    weights[target[0]] = 1.0  # only rows of the first row's class count
    rows = target == target[0]
    expected = FocalLoss(gamma=2.0)(logits[rows], target[rows])
    torch.testing.assert_close(FocalLoss(gamma=2.0, weight=weights)(logits, target), expected)


def test_unknown_loss_name_is_refused():
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("hinge", class_weights=None, label_smoothing=0.0, focal_gamma=2.0)
