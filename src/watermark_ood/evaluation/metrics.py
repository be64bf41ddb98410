"""OOD detection metrics. Scores follow "higher = more in-distribution".

Every function takes the ID scores and the OOD scores separately, so the
positive class is never ambiguous; each docstring names it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.data.streaming import readable_rows


def _validate(id_scores, ood_scores, tpr: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 < tpr <= 1.0:
        raise WatermarkOODError(f"tpr must be in (0, 1], got {tpr}")
    id_scores = np.asarray(id_scores, dtype=np.float64).ravel()
    ood_scores = np.asarray(ood_scores, dtype=np.float64).ravel()
    if id_scores.size == 0 or ood_scores.size == 0:
        raise WatermarkOODError("metrics need at least one ID score and one OOD score")
    if not (np.isfinite(id_scores).all() and np.isfinite(ood_scores).all()):
        raise WatermarkOODError("scores contain NaN or infinite values")
    return id_scores, ood_scores


def _labels_and_scores(id_scores: np.ndarray, ood_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.concatenate([np.ones_like(id_scores), np.zeros_like(ood_scores)])
    return labels, np.concatenate([id_scores, ood_scores])


def fpr_at_tpr(id_scores, ood_scores, tpr: float = 0.95) -> float:
    """False-positive rate at the first threshold that accepts at least ``tpr`` of ID.

    Positive class: ID (the paper's convention). An input is accepted as ID
    when its score is >= the threshold; tied scores are accepted together.

    >>> fpr_at_tpr([0.9, 0.8, 0.7, 0.6], [0.1, 0.65], tpr=0.75)
    0.0
    >>> fpr_at_tpr([0.9, 0.8, 0.7, 0.6], [0.1, 0.65], tpr=1.0)
    0.5
    """
    id_scores, ood_scores = _validate(id_scores, ood_scores, tpr)
    labels, scores = _labels_and_scores(id_scores, ood_scores)
    fprs, tprs, _ = roc_curve(labels, scores, drop_intermediate=False)
    index = int(np.searchsorted(tprs, tpr - 1e-12, side="left"))
    return float(fprs[index])


def fpr_at_tpr_resampled(id_scores, ood_scores, id_rows: np.ndarray, ood_rows: np.ndarray,
                         tpr: float = 0.95) -> np.ndarray:
    """:func:`fpr_at_tpr` of many paired resamples at once (row r: ``id_scores[id_rows[r]]`` against
    ``ood_scores[ood_rows[r]]``), from one partial sort per resample instead of a ROC curve each.

    The first threshold that accepts ``tpr`` of ID is the k-th largest ID score, k = ceil(tpr n), ties accepted
    together, so the false-positive rate is the share of outliers at or above it.

    >>> ids, outs = np.array([0.9, 0.8, 0.7, 0.6]), np.array([0.1, 0.65])
    >>> fpr_at_tpr_resampled(ids, outs, np.array([[0, 1, 2, 3], [0, 0, 3, 3]]), np.array([[0, 1], [1, 1]]), 0.75)
    array([0., 1.])
    """
    id_scores, ood_scores = _validate(id_scores, ood_scores, tpr)
    n = id_rows.shape[1]
    k = min(n, max(1, int(np.ceil(n * (tpr - 1e-12)))))
    drawn = id_scores[id_rows]
    threshold = np.partition(drawn, n - k, axis=1)[:, n - k]  # the k-th largest of each resample
    return (ood_scores[ood_rows] >= threshold[:, None]).mean(axis=1)


def auroc(id_scores, ood_scores) -> float:
    """Area under the ROC curve, ID as positive (symmetric: same with OOD positive on -score).

    >>> auroc([0.9, 0.8], [0.1, 0.85])
    0.75
    """
    id_scores, ood_scores = _validate(id_scores, ood_scores)
    labels, scores = _labels_and_scores(id_scores, ood_scores)
    return float(roc_auc_score(labels, scores))


def aupr_in(id_scores, ood_scores) -> float:
    """Average precision with ID as the positive class, ranked by score."""
    id_scores, ood_scores = _validate(id_scores, ood_scores)
    labels, scores = _labels_and_scores(id_scores, ood_scores)
    return float(average_precision_score(labels, scores))


def aupr_out(id_scores, ood_scores) -> float:
    """Average precision with OOD as the positive class, ranked by the negated score."""
    id_scores, ood_scores = _validate(id_scores, ood_scores)
    labels, scores = _labels_and_scores(id_scores, ood_scores)
    return float(average_precision_score(1 - labels, -scores))


METRIC_NAMES = ("fpr95", "auroc", "aupr_in", "aupr_out")


def ood_metrics(id_scores, ood_scores) -> dict[str, float]:
    """All four metrics of results.json, as fractions in [0, 1]."""
    return {
        "fpr95": fpr_at_tpr(id_scores, ood_scores, 0.95),
        "auroc": auroc(id_scores, ood_scores),
        "aupr_in": aupr_in(id_scores, ood_scores),
        "aupr_out": aupr_out(id_scores, ood_scores),
    }


def mean_metrics(per_set: dict[str, dict[str, float]]) -> dict[str, float]:
    """Unweighted mean over OOD sets, as the paper reports it."""
    return {name: float(np.mean([m[name] for m in per_set.values()])) for name in METRIC_NAMES}


def mean_fpr_standard_error(fprs: Sequence[float], counts: Sequence[int]) -> float:
    """Binomial standard error of an unweighted mean of FPRs, each measured on ``counts[i]`` OOD images.

    Each FPR is a share of OOD images accepted, so its variance is p (1 - p) / n; the sets are independent.
    The ID side (where the 95% threshold falls) adds noise too, so this is a lower bound on the real spread:
    rows closer than about two of these are not told apart by the data.

    >>> round(mean_fpr_standard_error([0.5], [100]), 3)
    0.05
    >>> round(mean_fpr_standard_error([0.5, 0.5], [100, 100]), 4)
    0.0354
    """
    if len(fprs) != len(counts) or not fprs:
        raise WatermarkOODError(f"need one count per FPR, got {len(fprs)} FPRs and {len(counts)} counts")
    variance = sum(p * (1 - p) / max(int(n), 1) for p, n in zip(fprs, counts))
    return float(np.sqrt(variance) / len(fprs))


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy over the readable rows (files skipped as unreadable have all-NaN logits)."""
    rows = readable_rows(logits)
    return float((logits[rows].argmax(1) == labels[rows]).float().mean())
