"""The curves and tables of a scored eval set: ROC, confusion matrix, calibration."""

import numpy as np

ROC_POINTS = 200  # points of the ROC curve kept for the Kubeflow UI and the report
CALIBRATION_BINS = 10


def roc_curve(labels: np.ndarray, scores: np.ndarray, points: int = ROC_POINTS) -> list[tuple]:
    """Exact ROC (one point per distinct score), thinned to about ``points`` points.
    Returns (fpr, tpr, threshold) with threshold = the lowest score predicted positive."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order] > 0.5
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    pos, neg = max(tps[-1], 1), max(fps[-1], 1)
    fpr, tpr, thr = np.r_[0.0, fps / neg], np.r_[0.0, tps / pos], np.r_[1.0, s[distinct]]
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(points, len(fpr))).round().astype(int))
    return [(float(fpr[i]), float(tpr[i]), float(min(thr[i], 1.0))) for i in keep]


def confusion_at_base_rate(labels: np.ndarray, scores: np.ndarray) -> tuple[float, list[list[int]]]:
    """Confusion matrix [[TN, FP], [FN, TP]] at the threshold that predicts as many
    positives as there are (for rare clicks a 0.5 cut predicts almost nothing positive)."""
    y = labels > 0.5
    k = int(y.sum())
    threshold = float(np.sort(scores)[::-1][k - 1]) if k > 0 else 1.0
    pred = scores >= threshold
    return threshold, [
        [int((~y & ~pred).sum()), int((~y & pred).sum())],
        [int((y & ~pred).sum()), int((y & pred).sum())],
    ]


def calibration_table(
    labels: np.ndarray, scores: np.ndarray, bins: int = CALIBRATION_BINS
) -> list[tuple]:
    """Per score decile: (mean prediction, observed positive rate, rows)."""
    order = np.argsort(scores, kind="stable")
    out = []
    for chunk in np.array_split(order, bins):
        if len(chunk):
            out.append((float(scores[chunk].mean()), float(labels[chunk].mean()), int(len(chunk))))
    return out
