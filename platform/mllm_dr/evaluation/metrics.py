"""Evaluation metrics: the one place every number of a report is computed. Pure functions on numpy arrays.

The unit of evaluation is the **subject**: item scores are summed into a PHQ total per interview, and the
headline figures compare predicted with true totals (the paper's protocol). Conventions, fixed here once:

- Moments are population moments (``ddof=0``) everywhere. The authors' script mixes ``ddof=1`` variances
  with a ``ddof=0`` covariance inside CCC, which biases it; we do not.
- ``MAE = mean|p - t|``, ``RMSE = sqrt(mean (p - t)^2)``.
- Lin's concordance ``CCC = 2 cov(t, p) / (var t + var p + (mean t - mean p)^2)``. It is defined for constant
  predictions (it is then 0 unless the truth is the same constant); when *both* series are the same constant
  the denominator is 0 and CCC is **1** (perfect agreement).
- Pearson ``r = cov(t, p) / sqrt(var t * var p)`` is undefined when either series is constant (a single
  subject, constant predictions such as the training-mean baseline): it is then **None** (JSON ``null``),
  never NaN and never a fake 0.
- Screening at a cut-off: a total ``>= cutoff`` is positive (PHQ-8 >= 10 by default; the CMDC protocol uses 9).
  ``precision = TP/(TP+FP)``, ``recall = TP/(TP+FN)``, ``F1 = 2TP/(2TP+FP+FN)``, each **0** when its denominator
  is 0 (scikit-learn's ``zero_division=0``; so F1 is 0 when there are no positives and none are predicted: a
  split without cases cannot show screening skill). ``balanced accuracy`` is the mean recall over the classes
  present in the truth (scikit-learn's definition): specificity alone when every subject is negative.
- Items: MAE on the raw (possibly fractional) predicted item scores; exact accuracy and the 4x4 confusion
  matrix (rows = true score, columns = predicted) on predictions rounded half-up and clipped to 0-3.
- Baseline: every figure is reported beside the same figure for predicting the *training* mean (totals) and
  the training item means (items) for every subject.
- Confidence intervals: percentile bootstrap over subjects (resampled with replacement, seeded). Model and
  baseline are resampled with the same indices, so their intervals are paired. Resamples on which a metric is
  undefined (Pearson on a constant resample) are left out; the interval is None if none is left.
- No subjects: every metric is None.

The statistics are written over the last axis so the bootstrap evaluates all resamples at once.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from mllm_dr.questionnaires import MAX_ITEM_SCORE

# Variances below this count as zero: float round-off makes a constant series' variance ~1e-33, not 0.
_ZERO_VARIANCE = 1e-12
DEFAULT_BOOTSTRAP = 1000
DEFAULT_LEVEL = 0.95
# Resampled scores held in memory at once during the bootstrap (resamples x subjects).
_BOOTSTRAP_CHUNK = 2_000_000

Statistic = Callable[[np.ndarray, np.ndarray], np.ndarray]


# --- statistics over the last axis (NaN marks "undefined"; the public wrappers turn it into None) ---

def _mae(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    return np.abs(p - t).mean(-1)


def _rmse(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    return np.sqrt(((p - t) ** 2).mean(-1))


def _moments(t: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, ...]:
    mean_t, mean_p = t.mean(-1), p.mean(-1)
    dt, dp = t - mean_t[..., None], p - mean_p[..., None]
    var_t, var_p, cov = (dt * dt).mean(-1), (dp * dp).mean(-1), (dt * dp).mean(-1)
    var_t, var_p = _snap_zero(var_t), _snap_zero(var_p)
    return mean_t, mean_p, var_t, var_p, cov


def _snap_zero(variance: np.ndarray) -> np.ndarray:
    return np.where(variance < _ZERO_VARIANCE, 0.0, variance)


def _ccc(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    mean_t, mean_p, var_t, var_p, cov = _moments(t, p)
    denominator = var_t + var_p + (mean_t - mean_p) ** 2
    defined = denominator >= _ZERO_VARIANCE
    return np.where(defined, 2 * cov / np.where(defined, denominator, 1.0), 1.0)


def _pearson_r(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    _, _, var_t, var_p, cov = _moments(t, p)
    spread = np.sqrt(var_t * var_p)
    return np.where(spread > 0, cov / np.where(spread > 0, spread, 1.0), np.nan)


def _counts(t: np.ndarray, p: np.ndarray, cutoff: float) -> tuple[np.ndarray, ...]:
    true_pos, pred_pos = t >= cutoff, p >= cutoff
    tp = (true_pos & pred_pos).sum(-1)
    fp = (~true_pos & pred_pos).sum(-1)
    fn = (true_pos & ~pred_pos).sum(-1)
    tn = (~true_pos & ~pred_pos).sum(-1)
    return tp, fp, fn, tn


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator``, 0 where the denominator is 0 (scikit-learn's ``zero_division=0``)."""
    return np.where(denominator > 0, numerator / np.maximum(denominator, 1), 0.0)


def _precision(t: np.ndarray, p: np.ndarray, cutoff: float) -> np.ndarray:
    tp, fp, _, _ = _counts(t, p, cutoff)
    return _ratio(tp, tp + fp)


def _recall(t: np.ndarray, p: np.ndarray, cutoff: float) -> np.ndarray:
    tp, _, fn, _ = _counts(t, p, cutoff)
    return _ratio(tp, tp + fn)


def _f1(t: np.ndarray, p: np.ndarray, cutoff: float) -> np.ndarray:
    tp, fp, fn, _ = _counts(t, p, cutoff)
    return _ratio(2 * tp, 2 * tp + fp + fn)


def _balanced_accuracy(t: np.ndarray, p: np.ndarray, cutoff: float) -> np.ndarray:
    tp, fp, fn, tn = _counts(t, p, cutoff)
    positives, negatives = tp + fn, tn + fp
    classes = (positives > 0).astype(float) + (negatives > 0)
    return _ratio(_ratio(tp, positives) + _ratio(tn, negatives), classes)


REGRESSION_STATISTICS: dict[str, Statistic] = {
    "mae": _mae, "rmse": _rmse, "ccc": _ccc, "pearson_r": _pearson_r,
}
SCREENING_STATISTICS = {
    "precision": _precision, "recall": _recall, "f1": _f1, "balanced_accuracy": _balanced_accuracy,
}


# --- public API ---

def as_scores(values: Any) -> np.ndarray:
    """A 1-D float array of scores; a clear ``ValueError`` for anything else (NaN included)."""
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"expected a 1-D sequence of scores, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("scores must be finite numbers (drop unscored subjects before computing metrics)")
    return array


def _pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t, p = as_scores(y_true), as_scores(y_pred)
    if t.shape != p.shape:
        raise ValueError(f"{t.size} true scores but {p.size} predictions")
    return t, p


def _value(result: np.ndarray | float) -> float | None:
    value = float(result)
    return None if np.isnan(value) else value


def _scalar(statistic: Statistic, y_true: Any, y_pred: Any) -> float | None:
    t, p = _pair(y_true, y_pred)
    return _value(statistic(t, p)) if t.size else None


def mae(y_true: Any, y_pred: Any) -> float | None:
    return _scalar(_mae, y_true, y_pred)


def rmse(y_true: Any, y_pred: Any) -> float | None:
    return _scalar(_rmse, y_true, y_pred)


def ccc(y_true: Any, y_pred: Any) -> float | None:
    """Lin's concordance correlation coefficient with population moments (1 for two equal constants)."""
    return _scalar(_ccc, y_true, y_pred)


def pearson_r(y_true: Any, y_pred: Any) -> float | None:
    """Pearson correlation; None when either series is constant (undefined)."""
    return _scalar(_pearson_r, y_true, y_pred)


def screening(y_true: Any, y_pred: Any, cutoff: float) -> dict[str, Any]:
    """Precision, recall, F1, balanced accuracy and the confusion counts of ``total >= cutoff``."""
    t, p = _pair(y_true, y_pred)
    tp, fp, fn, tn = (int(c) for c in _counts(t, p, cutoff))
    metrics: dict[str, Any] = {
        name: (_value(statistic(t, p, cutoff)) if t.size else None)
        for name, statistic in SCREENING_STATISTICS.items()
    }
    return {**metrics, "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn}}


def bootstrap_ci(
    y_true: Any,
    y_pred: Any,
    statistics: dict[str, Statistic],
    n_resamples: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> dict[str, list[float] | None]:
    """Percentile bootstrap intervals ``[low, high]`` per statistic, resampling subjects with replacement.

    The same ``seed`` draws the same resamples for the same number of subjects, which is what pairs the
    model's intervals with the baseline's.
    """
    t, p = _pair(y_true, y_pred)
    if not t.size or n_resamples <= 0:
        return {name: None for name in statistics}
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, t.size, size=(n_resamples, t.size))
    values: dict[str, list[np.ndarray]] = {name: [] for name in statistics}
    step = max(1, _BOOTSTRAP_CHUNK // t.size)
    for start in range(0, n_resamples, step):
        chunk = indices[start:start + step]
        for name, statistic in statistics.items():
            values[name].append(statistic(t[chunk], p[chunk]))
    tail = 100 * (1 - level) / 2
    intervals: dict[str, list[float] | None] = {}
    for name, parts in values.items():
        samples = np.concatenate(parts)
        samples = samples[~np.isnan(samples)]
        intervals[name] = (
            [float(np.percentile(samples, tail)), float(np.percentile(samples, 100 - tail))] if samples.size else None
        )
    return intervals


def total_metrics(
    y_true: Any,
    y_pred: Any,
    train_mean: float,
    cutoff: float,
    n_resamples: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> dict[str, Any]:
    """Every subject-total figure, the training-mean baseline's (``baseline_<name>``) and their intervals."""
    t, p = _pair(y_true, y_pred)
    baseline = np.full_like(t, float(train_mean))
    statistics: dict[str, Statistic] = {
        **REGRESSION_STATISTICS,
        **{name: partial(statistic, cutoff=cutoff) for name, statistic in SCREENING_STATISTICS.items()},
    }
    result: dict[str, Any] = {"n_subjects": int(t.size)}
    for prefix, predictions in (("", p), ("baseline_", baseline)):
        for name, statistic in statistics.items():
            result[prefix + name] = _value(statistic(t, predictions)) if t.size else None
    result["confusion"] = screening(t, p, cutoff)["confusion"]
    result["baseline_confusion"] = screening(t, baseline, cutoff)["confusion"]
    ci = bootstrap_ci(t, p, statistics, n_resamples, seed, level)
    baseline_ci = bootstrap_ci(t, baseline, statistics, n_resamples, seed, level)
    result["ci"] = {**ci, **{f"baseline_{name}": value for name, value in baseline_ci.items()}}
    return result


def round_item_scores(scores: Any) -> np.ndarray:
    """Item predictions as integer 0-3 classes: rounded half-up (2.5 -> 3, unlike numpy's half-to-even)."""
    return np.clip(np.floor(as_scores(scores) + 0.5), 0, MAX_ITEM_SCORE).astype(int)


def confusion_matrix(y_true: Any, y_pred: Any, n_classes: int = MAX_ITEM_SCORE + 1) -> list[list[int]]:
    """``matrix[true][predicted]`` counts of item scores (predictions rounded and clipped to 0-3)."""
    t = as_scores(y_true).astype(int)
    p = round_item_scores(y_pred)
    if t.shape != p.shape:
        raise ValueError(f"{t.size} true scores but {p.size} predictions")
    if t.size and (t.min() < 0 or t.max() >= n_classes):
        raise ValueError(f"true item scores must be 0-{n_classes - 1}")
    matrix = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(matrix, (t, p), 1)
    return matrix.tolist()


def item_metrics(y_true: Any, y_pred: Any, train_mean: float) -> dict[str, Any]:
    """One questionnaire item over subjects: MAE, exact accuracy, confusion matrix, and the baseline's."""
    t, p = _pair(y_true, y_pred)
    baseline = np.full_like(t, float(train_mean))
    exact = round_item_scores(p) == t
    baseline_exact = round_item_scores(baseline) == t
    return {
        "n_subjects": int(t.size),
        "mae": mae(t, p),
        "accuracy": float(exact.mean()) if t.size else None,
        "confusion": confusion_matrix(t, p),
        "baseline_mae": mae(t, baseline),
        "baseline_accuracy": float(baseline_exact.mean()) if t.size else None,
    }
