"""Decisions with a guarantee: split-conformal thresholds, a p-value per input, and a test for distribution shift.

Assumption (the only one): the calibration images and the ID inputs met in use are *exchangeable*, e.g. drawn
independently from the same distribution. Scores follow "higher = more in-distribution".

**Threshold.** With ``n`` calibration scores sorted ``s_(1) <= ... <= s_(n)`` and ``alpha = 1 - tpr``, take
``k = floor(alpha (n + 1))`` and reject an input when its score is below ``t = s_(k)``. An exchangeable ID input's
rank among the ``n + 1`` scores is uniform, so

    P(reject an ID input) = P(rank <= k) <= k / (n + 1) <= alpha        for every n,

averaged over the draw of the calibration set (ties only lower it). It needs ``k >= 1``, i.e.
``n >= 1 / alpha - 1`` (19 images for tpr 0.95, 99 for 0.99); a smaller ``n`` is refused.

**p-value.** ``p(x) = (1 + #{i : s_i <= s(x)}) / (n + 1)``. For an ID input ``P(p <= u) <= u`` for every ``u``;
OOD inputs, scored low, get small p-values. An input is rejected exactly when ``p <= k / (n + 1)``.

**Per class.** The same within each predicted class (one threshold and one p-value per class from that class's
calibration images): each class gets its own guarantee, so no class carries all the false rejections.

**False-discovery rate over a batch.** Rejecting every input with ``p <= alpha`` bounds the share of ID inputs
rejected, not the share of *rejections* that were ID. The Benjamini-Hochberg procedure over a batch's ``m``
p-values (sorted ``p_(1) <= ... <= p_(m)``; reject the ``k`` smallest for the largest ``k`` with
``p_(k) <= k q / m``) bounds that false-discovery rate by ``q``: conformal p-values sharing one calibration set are
positively dependent (PRDS), which is what the procedure needs (Bates, Candes, Lei, Romano and Sesia, "Testing for
outliers with conformal p-values", Annals of Statistics 2023). Per-class p-values are not covered by that result.

**Shift alarm.** Among ``m`` inputs, ``r`` are rejected. If they are all ID and exchangeable with the calibration
set, ``r`` follows a beta-binomial law (the binomial with the calibration set's own luck folded in:
``BetaBinomial(m, k, n + 1 - k)``), so ``P(R >= r)`` is an exact p-value for "these inputs are like the
calibration data". The plain binomial test against ``1 - tpr`` is reported beside it; for large ``n`` the two
agree, for small ``n`` the binomial one raises false alarms.

>>> scores = np.arange(1.0, 20.0)          # 19 calibration scores
>>> conformal_rank(19, 0.95)               # floor(0.05 * 20)
1
>>> float(conformal_threshold(scores, 0.95))
1.0
>>> p_values(scores, np.array([0.5, 1.0, 10.0])).round(3).tolist()
[0.05, 0.1, 0.55]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import betabinom, binom, false_discovery_control

from watermark_ood.core.errors import WatermarkOODError


def min_calibration_size(tpr: float) -> int:
    """The smallest n for which a split-conformal threshold at ``tpr`` exists (k >= 1)."""
    return max(1, math.ceil(1.0 / (1.0 - tpr) - 1.0 - 1e-9))


def check_tpr(tpr: float) -> float:
    if isinstance(tpr, bool) or not isinstance(tpr, (int, float)) or not 0.0 < tpr < 1.0:
        raise WatermarkOODError(f"tpr must be in (0, 1) (the share of ID inputs to accept), got {tpr}")
    return float(tpr)


def check_fdr_level(level: float) -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 < level < 1.0:
        raise WatermarkOODError(f"--fdr is a false-discovery rate in (0, 1), e.g. 0.1; got {level}")
    return float(level)


def conformal_rank(n: int, tpr: float, what: str = "calibration images") -> int:
    """k = floor((1 - tpr)(n + 1)): the rank of the threshold among the sorted calibration scores."""
    check_tpr(tpr)
    k = int(math.floor((1.0 - tpr) * (n + 1) + 1e-9))
    if k < 1:
        raise WatermarkOODError(f"{n} {what} cannot support tpr {tpr}: a guaranteed false-rejection rate of at most "
                                f"{1 - tpr:.3g} needs at least {min_calibration_size(tpr)}")
    return k


def conformal_threshold(scores: np.ndarray, tpr: float, what: str = "calibration images") -> float:
    """The split-conformal threshold: reject when score < it (see the module docstring)."""
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    return float(ordered[conformal_rank(len(ordered), tpr, what) - 1])


def benjamini_hochberg(p: np.ndarray, level: float) -> np.ndarray:
    """Which inputs the Benjamini-Hochberg procedure at false-discovery rate ``level`` rejects (scipy's adjusted
    p-values at most ``level``); NaN p-values (unreadable inputs) are neither counted nor rejected.

    >>> benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.5, np.nan]), 0.1).tolist()
    [True, True, True, False, False]
    """
    check_fdr_level(level)
    p = np.asarray(p, dtype=np.float64)
    rejected = np.zeros(len(p), dtype=bool)
    tested = ~np.isnan(p)
    if tested.any():
        rejected[tested] = false_discovery_control(p[tested], method="bh") <= level
    return rejected


def p_values(sorted_scores: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Conformal p-values of ``scores`` against the sorted calibration scores (NaN stays NaN)."""
    sorted_scores = np.asarray(sorted_scores, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    counts = np.searchsorted(sorted_scores, scores, side="right")
    out = (1.0 + counts) / (len(sorted_scores) + 1.0)
    return np.where(np.isnan(scores), np.nan, out)


@dataclass(frozen=True)
class Calibration:
    """What a calibrated detector holds: the sorted scores, their predicted classes, and the thresholds."""

    scores: np.ndarray  # sorted ascending (within each class when per_class)
    classes: np.ndarray | None  # predicted class of each score, per_class only
    tpr: float
    threshold: float  # the overall split-conformal threshold
    class_thresholds: dict[int, float] | None = None

    @property
    def n(self) -> int:
        return len(self.scores)

    def summary(self) -> dict[str, Any]:
        k = conformal_rank(self.n, self.tpr)
        out: dict[str, Any] = {
            "method": "split-conformal", "n": self.n, "rank": k,
            "guaranteed_false_rejection_at_most": k / (self.n + 1),
            "assumption": "calibration images and ID inputs are exchangeable (i.i.d. from one distribution)",
            "per_class": self.class_thresholds is not None}
        if self.class_thresholds is not None:
            sizes = {c: int((self.classes == c).sum()) for c in self.class_thresholds}
            out["classes"] = {str(c): {"n": sizes[c], "threshold": t,
                                       "guaranteed_false_rejection_at_most":
                                           conformal_rank(sizes[c], self.tpr) / (sizes[c] + 1)}
                              for c, t in self.class_thresholds.items()}
        return out

    def thresholds_for(self, predicted: np.ndarray) -> np.ndarray:
        if self.class_thresholds is None:
            return np.full(len(predicted), self.threshold)
        # a class never predicted on calibration data: nothing can be guaranteed, so such inputs are rejected
        return np.array([self.class_thresholds.get(int(c), np.inf) for c in predicted])

    def p_values(self, scores: np.ndarray, predicted: np.ndarray | None = None) -> np.ndarray:
        if self.class_thresholds is None or predicted is None:
            return p_values(self.scores, scores)
        out = np.full(len(scores), np.nan)
        for c in np.unique(predicted):
            rows = predicted == c
            own = self.scores[self.classes == c]
            out[rows] = p_values(own, scores[rows]) if len(own) else 0.0
        return np.where(np.isnan(scores), np.nan, out)


def calibrate(scores: np.ndarray, tpr: float, classes: np.ndarray | None = None,
              per_class: bool = False, num_classes: int | None = None) -> Calibration:
    """A :class:`Calibration` from the scores (and predicted classes) of held-out ID images."""
    scores = np.asarray(scores, dtype=np.float64)
    keep = ~np.isnan(scores)
    scores = scores[keep]
    threshold = conformal_threshold(scores, tpr)
    if not per_class:
        return Calibration(np.sort(scores), None, tpr, threshold)
    if classes is None:
        raise WatermarkOODError("per-class calibration needs the predicted class of each calibration image")
    classes = np.asarray(classes)[keep]
    present = sorted(set(classes.tolist()) | set(range(num_classes or 0)))
    thresholds = {}
    for c in present:
        thresholds[int(c)] = conformal_threshold(scores[classes == c], tpr,
                                                 f"calibration images predicted as class {c}")
    order = np.lexsort((scores, classes))
    return Calibration(scores[order], classes[order], tpr, threshold, thresholds)


def shift_test(rejected: int, inputs: int, tpr: float, n: int | None = None) -> dict[str, Any]:
    """Is the share of rejected inputs larger than ID inputs allow? One-sided exact tests (module docstring)."""

    alpha = 1.0 - tpr
    out: dict[str, Any] = {"inputs": int(inputs), "rejected": int(rejected),
                           "rejected_share": rejected / inputs if inputs else None,
                           "expected_share_at_most": alpha,
                           "binomial_p": float(binom.sf(rejected - 1, inputs, alpha)) if inputs else 1.0}
    if n is not None and inputs:
        k = conformal_rank(n, tpr)
        out["expected_share_at_most"] = k / (n + 1)
        out["beta_binomial_p"] = float(betabinom.sf(rejected - 1, inputs, k, n + 1 - k))
    out["p_value"] = out.get("beta_binomial_p", out["binomial_p"])
    return out
