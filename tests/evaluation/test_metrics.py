"""Metrics against values worked out by hand (see the comments), including the documented edge cases."""

import math

import numpy as np
import pytest

from mllm_dr.evaluation import metrics

# t = [0, 5, 10, 15], p = [2, 5, 8, 19]; errors 2, 0, -2, 4
# mean t 7.5, var t 31.25; mean p 8.5, var p 41.25; cov 33.75 (all population moments)
TRUE = [0, 5, 10, 15]
PRED = [2, 5, 8, 19]


def test_regression_metrics_match_hand_computation():
    assert metrics.mae(TRUE, PRED) == pytest.approx(2.0)
    assert metrics.rmse(TRUE, PRED) == pytest.approx(math.sqrt(6.0))
    # 2 * 33.75 / (31.25 + 41.25 + 1^2) = 45/49; the authors' ddof mix would give 67.5 / 97.67 = 0.691
    assert metrics.ccc(TRUE, PRED) == pytest.approx(45 / 49)
    assert metrics.pearson_r(TRUE, PRED) == pytest.approx(33.75 / math.sqrt(31.25 * 41.25))


def test_screening_at_the_default_and_cmdc_cutoffs():
    # >= 10: truth F F T T, predicted F F F T -> tp 1, fp 0, fn 1, tn 2
    at_10 = metrics.screening(TRUE, PRED, cutoff=10)
    assert at_10["confusion"] == {"tp": 1, "fp": 0, "fn": 1, "tn": 2}
    assert at_10["precision"] == 1.0 and at_10["recall"] == 0.5
    assert at_10["f1"] == pytest.approx(2 / 3) and at_10["balanced_accuracy"] == pytest.approx(0.75)
    # >= 8: the 8 now screens positive -> perfect
    at_8 = metrics.screening(TRUE, PRED, cutoff=8)
    assert at_8["confusion"] == {"tp": 2, "fp": 0, "fn": 0, "tn": 2} and at_8["f1"] == 1.0
    # >= 9 (CMDC protocol): truth F F T T, 8 is below -> same as >= 10
    assert metrics.screening(TRUE, PRED, cutoff=9)["confusion"] == at_10["confusion"]


def test_constant_predictions_have_defined_ccc_and_no_pearson():
    constant = [5, 5, 5, 5]
    assert metrics.pearson_r(TRUE, constant) is None
    assert metrics.ccc(TRUE, constant) == pytest.approx(0.0)  # cov 0 over 31.25 + 0 + 2.5^2
    assert metrics.ccc([0.1, 0.1, 0.1], [0.1, 0.1, 0.1]) == 1.0  # the same constant: perfect agreement
    assert metrics.ccc([4, 4], [6, 6]) == pytest.approx(0.0)  # two different constants
    assert metrics.pearson_r([4, 4], [6, 6]) is None


def test_single_subject():
    assert metrics.mae([12], [9]) == 3.0 and metrics.rmse([12], [9]) == 3.0
    assert metrics.ccc([12], [9]) == pytest.approx(0.0) and metrics.ccc([12], [12]) == 1.0
    assert metrics.pearson_r([12], [9]) is None
    screen = metrics.screening([12], [9], cutoff=10)  # a missed case: nothing predicted positive
    assert (screen["precision"], screen["recall"], screen["f1"], screen["balanced_accuracy"]) == (0, 0, 0, 0)
    result = metrics.total_metrics([12], [9], train_mean=7, cutoff=10, n_resamples=50)
    assert result["ci"]["mae"] == [3.0, 3.0] and result["ci"]["pearson_r"] is None
    assert result["baseline_mae"] == 5.0


def test_all_negative_labels_follow_zero_division_zero():
    # one false positive: precision 0/1, recall 0/0 -> 0, F1 0/(0+1+0), balanced accuracy = specificity 2/3
    screen = metrics.screening([0, 3, 5], [1, 12, 4], cutoff=10)
    assert screen["confusion"] == {"tp": 0, "fp": 1, "fn": 0, "tn": 2}
    assert (screen["precision"], screen["recall"], screen["f1"]) == (0.0, 0.0, 0.0)
    assert screen["balanced_accuracy"] == pytest.approx(2 / 3)
    # nothing positive, nothing predicted: F1 is 0 by convention, balanced accuracy 1 (all negatives right)
    clean = metrics.screening([0, 3, 5], [1, 2, 3], cutoff=10)
    assert clean["f1"] == 0.0 and clean["balanced_accuracy"] == 1.0
    all_positive = metrics.screening([12, 20], [15, 3], cutoff=10)
    assert all_positive["balanced_accuracy"] == 0.5  # recall only: specificity has no negatives to count


def test_no_subjects_give_none_everywhere():
    result = metrics.total_metrics([], [], train_mean=7, cutoff=10)
    assert result["n_subjects"] == 0
    assert all(result[k] is None for k in ("mae", "rmse", "ccc", "pearson_r", "f1", "baseline_mae"))
    assert all(v is None for v in result["ci"].values())
    assert metrics.mae([], []) is None


def test_total_metrics_put_the_training_mean_baseline_beside_every_figure():
    result = metrics.total_metrics(TRUE, PRED, train_mean=6, cutoff=10, n_resamples=200, seed=1)
    assert result["mae"] == pytest.approx(2.0) and result["ccc"] == pytest.approx(45 / 49)
    assert result["baseline_mae"] == pytest.approx((6 + 1 + 4 + 9) / 4)
    assert result["baseline_rmse"] == pytest.approx(math.sqrt((36 + 1 + 16 + 81) / 4))
    assert result["baseline_pearson_r"] is None and result["baseline_ccc"] == pytest.approx(0.0)
    assert result["baseline_confusion"] == {"tp": 0, "fp": 0, "fn": 2, "tn": 2} and result["baseline_f1"] == 0.0
    for name in ("mae", "rmse", "ccc", "f1", "baseline_mae"):
        low, high = result["ci"][name]
        assert low <= result[name] + 1e-9 and result[name] <= high + 1e-9


def test_bootstrap_is_seeded_and_equals_a_plain_resampling_loop(monkeypatch):
    rng = np.random.default_rng(3)
    t = rng.integers(0, 25, 30).astype(float)
    p = t + rng.normal(0, 3, 30)
    monkeypatch.setattr(metrics, "_BOOTSTRAP_CHUNK", 30 * 7)  # several chunks of resamples
    stats = {"mae": metrics.REGRESSION_STATISTICS["mae"], "ccc": metrics.REGRESSION_STATISTICS["ccc"]}
    got = metrics.bootstrap_ci(t, p, stats, n_resamples=100, seed=5)
    draws = np.random.default_rng(5).integers(0, 30, size=(100, 30))
    for name, scalar in (("mae", metrics.mae), ("ccc", metrics.ccc)):
        values = [scalar(t[i], p[i]) for i in draws]
        assert got[name] == pytest.approx(list(np.percentile(values, [2.5, 97.5])))
    assert metrics.bootstrap_ci(t, p, stats, n_resamples=100, seed=5) == got
    assert metrics.bootstrap_ci(t, p, stats, n_resamples=100, seed=6) != got


def test_item_metrics_round_half_up_and_count_confusions():
    # rounded predictions 0, 2, 2, 3, 0 (1.5 -> 2, 2.49 -> 2, 3.7 -> 3, -1 -> 0): exact 3 of 5
    result = metrics.item_metrics([0, 1, 2, 3, 3], [0.4, 1.5, 2.49, 3.7, -1], train_mean=1.2)
    assert result["mae"] == pytest.approx((0.4 + 0.5 + 0.49 + 0.7 + 4) / 5)
    assert result["accuracy"] == pytest.approx(0.6)
    assert result["confusion"] == [[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0], [1, 0, 0, 1]]
    # baseline predicts 1.2 (class 1) for everyone: |1.2 - t| = 1.2, .2, .8, 1.8, 1.8
    assert result["baseline_mae"] == pytest.approx(5.8 / 5) and result["baseline_accuracy"] == pytest.approx(0.2)
    assert metrics.round_item_scores([0.5, 2.5]).tolist() == [1, 3]


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="finite"):
        metrics.mae([1, 2], [1, float("nan")])
    with pytest.raises(ValueError, match="2 true scores but 3"):
        metrics.rmse([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="0-3"):
        metrics.confusion_matrix([4], [1])
