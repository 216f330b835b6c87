"""Evaluation metrics on numpy arrays (exact, not binned).

- ``auc``: the probability that a random positive scores above a random negative (ties
  count half), from midranks: O(n log n).
- ``grouped_auc``: per-group AUC averaged with weights = group size, over groups that have
  both classes (the GAUC of the DIN paper; e.g. grouped by user).
- ``logloss``: mean binary cross-entropy of probabilities (clipped to [1e-7, 1 - 1e-7]).
- ``normalized_entropy``: logloss divided by the entropy of the base rate (<1 beats the
  constant predictor).
- ``calibration``: mean prediction / positive rate (1 is calibrated).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import rankdata

_EPS = 1e-7


def _weights(labels: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    return np.ones(len(labels)) if weights is None else np.asarray(weights, dtype=np.float64)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC AUC; NaN when only one class is present."""
    y = np.asarray(labels) > 0.5
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def grouped_auc_parts(
    labels: np.ndarray, scores: np.ndarray, groups: np.ndarray
) -> tuple[float, float]:
    """``grouped_auc``'s sums: (sum of group size x group AUC, sum of group sizes) over the
    groups with both classes; (0, 0) when none has. Parts of disjoint sets of groups add
    up (``model.group_spill`` sums them over hash partitions). Rows whose key is missing
    are in no group. One sort by (group, score): the midranks within each group, their
    sums over each group's positives (no loop per group or row)."""
    codes, _ = pd.factorize(np.asarray(groups))  # groups in order of appearance; -1: missing
    keep = codes >= 0
    g = codes[keep]
    y = np.asarray(labels)[keep] > 0.5
    s = np.asarray(scores, dtype=np.float64)[keep]
    if not len(g):
        return 0.0, 0.0
    order = np.lexsort((s, g))
    g, y, s = g[order], y[order], s[order]
    n = len(g)
    new_group = np.r_[True, g[1:] != g[:-1]]
    new_run = new_group | np.r_[True, s[1:] != s[:-1]]  # a run of tied scores in a group
    at = np.arange(n)
    pos = at - np.maximum.accumulate(np.where(new_group, at, 0)) + 1  # 1-based, in group
    run = np.cumsum(new_run) - 1
    first = pos[new_run]
    last = np.r_[first[1:] - 1, 0]  # a run ends where the next starts, or at its group's end
    size = np.bincount(g)
    run_group = g[new_run]
    ends_group = np.r_[run_group[1:] != run_group[:-1], True]
    last = np.where(ends_group, size[run_group], last)
    midrank = ((first + last) / 2.0)[run]
    n_pos = np.bincount(g, weights=y, minlength=len(size))
    rank_pos = np.bincount(g, weights=np.where(y, midrank, 0.0), minlength=len(size))
    n_neg = size - n_pos
    both = (n_pos > 0) & (n_neg > 0)
    if not both.any():
        return 0.0, 0.0
    p, q, w = n_pos[both], n_neg[both], size[both].astype(np.float64)
    g_auc = (rank_pos[both] - p * (p + 1) / 2.0) / (p * q)
    return float((g_auc * w).sum()), float(w.sum())


def grouped_auc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """Group-size-weighted mean of per-group AUC; groups with one class are skipped."""
    total, weight = grouped_auc_parts(labels, scores, groups)
    return total / weight if weight > 0 else float("nan")


def logloss(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray | None = None) -> float:
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1 - _EPS)
    per = -(y * np.log(p) + (1 - y) * np.log1p(-p))
    return float(np.average(per, weights=_weights(y, weights)))


def normalized_entropy(labels: np.ndarray, probs: np.ndarray) -> float:
    y = np.asarray(labels, dtype=np.float64)
    rate = float(np.clip(y.mean(), _EPS, 1 - _EPS))
    base = -(rate * np.log(rate) + (1 - rate) * np.log1p(-rate))
    return float(logloss(y, probs) / base)


def calibration(labels: np.ndarray, probs: np.ndarray) -> float:
    rate = float(np.mean(labels))
    return float(np.mean(probs)) / rate if rate > 0 else float("nan")


def binary_metrics(
    labels: np.ndarray,
    probs: np.ndarray,
    names: list[str],
    groups: np.ndarray | None = None,
) -> dict[str, float]:
    """The metrics named in the config (``auc``, ``logloss``, ``grouped_auc``,
    ``normalized_entropy``, ``calibration``) for binary labels and probabilities."""
    out: dict[str, float] = {}
    for name in names:
        if name == "auc":
            out["auc"] = auc(labels, probs)
        elif name == "logloss":
            out["logloss"] = logloss(labels, probs)
        elif name == "grouped_auc":
            if groups is None:
                raise ValueError("grouped_auc needs the grouping key's values")
            out["grouped_auc"] = grouped_auc(labels, probs, groups)
        elif name == "normalized_entropy":
            out["normalized_entropy"] = normalized_entropy(labels, probs)
        elif name == "calibration":
            out["calibration"] = calibration(labels, probs)
    out["positive_rate"] = float(np.mean(labels))
    out["mean_prediction"] = float(np.mean(probs))
    out["count"] = float(len(labels))
    return out
