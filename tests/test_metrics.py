"""Every metric against numbers worked out by hand on six (or four) samples."""

from __future__ import annotations

import numpy as np
import pytest

from skinlesion.evaluation import metrics
from skinlesion.inference import calibration

LABELS = ["bkl", "mel", "nv"]
# true:            bkl              bkl              mel              mel              nv               nv
Y = np.array([0, 0, 1, 1, 2, 2])
P = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5], [0.1, 0.1, 0.8], [0.2, 0.2, 0.6]])
# argmax:      bkl (right)       mel (wrong)      mel (right)      nv (wrong)       nv (right)       nv (right)


def test_summary_matches_hand_computed_values():
    s = metrics.classification_summary(Y, P, LABELS)
    assert s["n_images"] == 6
    assert s["classes"] == LABELS
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["confusion_matrix"] == [[1, 1, 0], [0, 1, 1], [0, 0, 2]]
    # recalls 1/2, 1/2, 2/2
    assert s["balanced_accuracy"] == pytest.approx(2 / 3)
    # precisions 1/1, 1/2, 2/3 ; F1 = 2/3, 1/2, 4/5
    assert s["per_class"]["bkl"]["precision"] == pytest.approx(1.0)
    assert s["per_class"]["mel"]["precision"] == pytest.approx(0.5)
    assert s["per_class"]["nv"]["precision"] == pytest.approx(2 / 3)
    assert [s["per_class"][c]["f1"] for c in LABELS] == pytest.approx([2 / 3, 0.5, 0.8])
    assert s["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 0.8) / 3)
    assert s["weighted_f1"] == pytest.approx(s["macro_f1"])  # equal supports
    assert s["macro_precision"] == pytest.approx((1 + 0.5 + 2 / 3) / 3)
    assert s["per_class"]["nv"]["support"] == 2
    # AUC, counting positive/negative pairs: bkl 8/8, mel 7/8 (0.3 < 0.6 once), nv 8/8
    assert [s["per_class"][c]["auc"] for c in LABELS] == pytest.approx([1.0, 0.875, 1.0])
    assert s["auc_ovr_macro"] == pytest.approx((1 + 0.875 + 1) / 3)
    assert s["malignant_auc"] == pytest.approx(0.875)  # only mel is malignant here
    # melanoma: 1 of 2 melanomas called mel; 3 of 4 non-melanomas not called mel
    assert s["melanoma"]["sensitivity"] == pytest.approx(0.5)
    assert s["melanoma"]["specificity"] == pytest.approx(0.75)
    # p(mel) of the melanomas (0.8, 0.3) against bkl's (0.2, 0.6): 3 of 4 pairs; against nv's (0.1, 0.2): 4 of 4
    assert s["melanoma"]["auc_against"] == pytest.approx({"bkl": 0.75, "nv": 1.0})
    assert "accuracy_all_classes" not in s  # every class present: nothing restricted


def test_macro_auc_agrees_with_sklearn_ovr_when_probs_sum_to_one():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=40)
    y = rng.integers(0, 4, size=40)
    assert metrics.macro_auc(y, probs) == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))


def test_class_subset_restricts_argmax_and_keeps_raw_probabilities_for_auc():
    y = np.array([0, 0, 2, 2])  # bkl, bkl, nv, nv: no melanoma in this set
    p = np.array([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    sub = metrics.restrict_to_present(y, p)
    assert sub.present.tolist() == [0, 2]
    assert sub.restricted
    assert sub.preds.tolist() == [0, 1, 1, 1]  # argmax over (bkl, nv) only
    np.testing.assert_allclose(sub.probs[0], [0.5 / 0.7, 0.2 / 0.7])
    np.testing.assert_allclose(sub.probs.sum(axis=1), 1.0)

    s = metrics.classification_summary(y, p, LABELS)
    assert s["classes"] == ["bkl", "nv"]
    assert set(s["per_class"]) == {"bkl", "nv"}
    assert s["accuracy"] == pytest.approx(3 / 4)
    assert s["accuracy_all_classes"] == pytest.approx(2 / 4)  # full argmax says mel twice
    assert s["confusion_matrix"] == [[1, 1], [0, 2]]
    # bkl AUC on raw p_bkl: pos (0.5, 0.2) vs neg (0.2, 0.1) -> 1 + 1 + 0.5 (tie) + 1 = 3.5 / 4
    assert s["per_class"]["bkl"]["auc"] == pytest.approx(0.875)
    # nv AUC on raw p_nv: pos (0.3, 0.8) vs neg (0.2, 0.3) -> 1 + 0.5 + 1 + 1 = 3.5 / 4
    assert s["per_class"]["nv"]["auc"] == pytest.approx(0.875)
    assert s["melanoma"] is None
    assert s["malignant_auc"] is None  # no malignant lesion among the targets: undefined


def test_undefined_auc_is_none_not_nan():
    assert metrics.binary_auc(np.array([True, True]), np.array([0.1, 0.9])) is None
    assert metrics.macro_auc(np.array([0, 0]), np.array([[0.6], [0.4]])) is None


def test_sensitivity_specificity_hand_values():
    r = metrics.sensitivity_specificity(np.array([1, 1, 1, 0, 0]), np.array([1, 0, 1, 1, 0]), positive=1)
    assert r["sensitivity"] == pytest.approx(2 / 3)
    assert r["specificity"] == pytest.approx(1 / 2)


def test_reliability_bins_reproduce_the_calibration_module_ece():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(3) * 0.5, size=200)
    y = rng.integers(0, 3, size=200)
    bins = metrics.reliability_bins(probs, y)
    assert len(bins["count"]) == metrics.ECE_BINS and sum(bins["count"]) == 200
    ece = sum(n / 200 * abs(a - c) for n, a, c in zip(bins["count"], bins["accuracy"], bins["confidence"],
                                                      strict=True) if n)
    assert ece == pytest.approx(calibration.expected_calibration_error(probs, y, n_bins=15))


def test_reliability_bins_by_hand():
    # confidences 0.95 (right), 0.95 (wrong), 0.55 (right): two filled bins
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.45, 0.55]])
    bins = metrics.reliability_bins(probs, np.array([0, 1, 1]), n_bins=10)
    assert bins["count"][9] == 2 and bins["accuracy"][9] == pytest.approx(0.5)
    assert bins["count"][5] == 1 and bins["accuracy"][5] == pytest.approx(1.0)
    assert bins["confidence"][0] is None


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, size=150)
    logits = np.eye(3)[y] * 1.5 + rng.normal(0, 1, (150, 3))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    a = metrics.bootstrap_intervals(y, probs, LABELS, n_resamples=200, seed=7)
    b = metrics.bootstrap_intervals(y, probs, LABELS, n_resamples=200, seed=7)
    c = metrics.bootstrap_intervals(y, probs, LABELS, n_resamples=200, seed=8)
    assert a == b
    assert a["balanced_accuracy"]["low"] != c["balanced_accuracy"]["low"]
    point = metrics.classification_summary(y, probs, LABELS)
    for name in ("balanced_accuracy", "auc_ovr_macro", "malignant_auc"):
        assert a[name]["low"] < point[name] < a[name]["high"]
        assert a[name]["n_valid"] == 200


def test_bootstrap_of_a_perfect_classifier_is_a_point():
    y = np.array([0, 1, 2] * 5)
    ci = metrics.bootstrap_intervals(y, np.eye(3)[y] * 0.9 + 0.1 / 3, LABELS, n_resamples=50, seed=0)
    assert (ci["auc_ovr_macro"]["low"], ci["auc_ovr_macro"]["high"]) == (1.0, 1.0)
    assert ci["balanced_accuracy"]["low"] == 1.0


def test_roc_curves_include_present_classes_and_malignant():
    curves = metrics.roc_curves(Y, P, LABELS)
    assert set(curves) == {"bkl", "mel", "nv", "malignant"}
    assert curves["mel"]["auc"] == pytest.approx(0.875)
    assert curves["bkl"]["fpr"][0] == 0.0 and curves["bkl"]["tpr"][-1] == 1.0


def test_rank_aucs_equal_sklearn_including_ties_and_undefined_columns():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    scores = np.round(rng.random((60, 3)), 1)  # coarse values: many ties
    pos = rng.random((60, 3)) < 0.3
    pos[:, 2] = False                          # no positives: undefined
    got = metrics.rank_aucs(pos, scores)
    for c in range(2):
        assert got[c] == pytest.approx(roc_auc_score(pos[:, c], scores[:, c]))
    assert np.isnan(got[2])


def test_paired_gap_interval_is_for_the_gap_itself():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, size=200)
    logits = np.eye(3)[y] * 1.5 + rng.normal(0, 1, (200, 3))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    # b = a with 20 wrong answers made right: the gap is positive, and so is its whole interval
    wrong = np.flatnonzero(probs.argmax(1) != y)[:20]
    better = probs.copy()
    better[wrong] = np.eye(3)[y[wrong]]
    gap = metrics.paired_difference_interval(y, probs, better, LABELS, n_resamples=300, seed=1)
    point = (metrics.classification_summary(y, better, LABELS)["balanced_accuracy"]
             - metrics.classification_summary(y, probs, LABELS)["balanced_accuracy"])
    assert gap["difference"] == pytest.approx(point) and point > 0
    assert 0 < gap["low"] < point < gap["high"]
    # identical predictions: a gap of exactly zero on every resample
    same = metrics.paired_difference_interval(y, probs, probs, LABELS, n_resamples=50, seed=1)
    assert (same["difference"], same["low"], same["high"]) == (0.0, 0.0, 0.0)
    with pytest.raises(KeyError, match="no bootstrap rule"):
        metrics.paired_difference_interval(y, probs, probs, LABELS, metric="accuracy")
