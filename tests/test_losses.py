"""Losses: focal loss against cross-entropy, class weights in weighted CE."""

from __future__ import annotations

import numpy as np
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


def test_logit_adjusted_loss_is_ce_on_prior_shifted_logits():
    from skinlesion.training.losses import LogitAdjustedLoss
    logits, target = torch.randn(8, 3), torch.tensor([0, 1, 2, 0, 1, 2, 0, 0])
    prior = torch.tensor([0.7, 0.2, 0.1])
    expected = F.cross_entropy(logits + 0.5 * prior.log(), target)
    torch.testing.assert_close(LogitAdjustedLoss(prior, tau=0.5)(logits, target), expected)
    # a uniform prior shifts every logit equally: plain CE
    flat = LogitAdjustedLoss(torch.full((3,), 1 / 3))(logits, target)
    torch.testing.assert_close(flat, F.cross_entropy(logits, target))


def test_logit_adjusted_training_learns_balanced_posteriors():
    """On a 9:1 set with no signal, plain CE learns the 9:1 prior; the adjusted loss learns equal logits."""
    from skinlesion.training.losses import seen_prior
    target = torch.tensor([0] * 90 + [1] * 10)
    prior = seen_prior(torch.tensor([90, 10]), sampling_power=None)
    for name, expected_gap in (("ce", float(np.log(9.0))), ("logit_adjusted", 0.0)):
        bias = torch.zeros(2, requires_grad=True)
        loss_fn = build_loss(name, class_weights=None, label_smoothing=0.0, focal_gamma=2.0, prior=prior)
        opt = torch.optim.SGD([bias], lr=1.0)
        for _ in range(300):
            opt.zero_grad()
            loss_fn(bias.expand(100, 2), target).backward()
            opt.step()
        assert float((bias[0] - bias[1]).detach()) == pytest.approx(expected_gap, abs=0.02), name


def test_seen_prior_follows_the_sampler():
    from skinlesion.training.losses import seen_prior
    counts = torch.tensor([400, 100])
    torch.testing.assert_close(seen_prior(counts, None), torch.tensor([0.8, 0.2]))
    torch.testing.assert_close(seen_prior(counts, 0.5), torch.tensor([2 / 3, 1 / 3]))   # sqrt: 20 : 10
    torch.testing.assert_close(seen_prior(counts, 1.0), torch.tensor([0.5, 0.5]))


def test_logit_adjusted_needs_a_prior():
    with pytest.raises(ValueError, match="prior"):
        build_loss("logit_adjusted", class_weights=None, label_smoothing=0.0, focal_gamma=2.0)
