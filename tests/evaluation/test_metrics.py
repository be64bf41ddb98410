import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.evaluation.metrics import aupr_in, aupr_out, auroc, fpr_at_tpr, mean_metrics, ood_metrics


def brute_force_fpr(id_scores, ood_scores, tpr=0.95):
    """Smallest FPR over every threshold t (accept score >= t) whose TPR reaches ``tpr``."""
    best = 1.0
    for t in np.unique(np.concatenate([id_scores, ood_scores])):
        if np.mean(id_scores >= t) >= tpr:
            best = min(best, float(np.mean(ood_scores >= t)))
    return best


scores = st.lists(st.integers(0, 12), min_size=1, max_size=60).map(lambda v: np.array(v, dtype=float) / 4)


@settings(max_examples=200, deadline=None)
@given(scores, scores)
def test_fpr95_equals_brute_force_with_ties(id_scores, ood_scores):
    assert fpr_at_tpr(id_scores, ood_scores) == pytest.approx(brute_force_fpr(id_scores, ood_scores))


@pytest.mark.parametrize("seed", range(5))
def test_fpr95_equals_brute_force_on_random_scores(seed):
    rng = np.random.default_rng(seed)
    id_scores, ood_scores = rng.normal(1, 1, 500), rng.normal(0, 1, 300)
    assert fpr_at_tpr(id_scores, ood_scores) == pytest.approx(brute_force_fpr(id_scores, ood_scores))
    assert fpr_at_tpr(id_scores, ood_scores, 0.5) == pytest.approx(brute_force_fpr(id_scores, ood_scores, 0.5))


@pytest.mark.parametrize("seed", range(3))
def test_auroc_and_aupr_equal_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    id_scores, ood_scores = rng.normal(1, 1, 200).round(1), rng.normal(0, 1, 100).round(1)
    labels = np.r_[np.ones(200), np.zeros(100)]
    both = np.r_[id_scores, ood_scores]
    assert auroc(id_scores, ood_scores) == pytest.approx(roc_auc_score(labels, both))
    assert aupr_in(id_scores, ood_scores) == pytest.approx(average_precision_score(labels, both))
    assert aupr_out(id_scores, ood_scores) == pytest.approx(average_precision_score(1 - labels, -both))


def test_perfect_and_reversed_separation():
    assert ood_metrics([2, 3, 4], [0, 1]) == {"fpr95": 0.0, "auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0}
    assert fpr_at_tpr([0, 1], [2, 3]) == 1.0 and auroc([0, 1], [2, 3]) == 0.0


def test_bad_inputs():
    with pytest.raises(WatermarkOODError):
        auroc([], [1.0])
    with pytest.raises(WatermarkOODError):
        fpr_at_tpr([np.nan], [1.0])
    with pytest.raises(WatermarkOODError):
        fpr_at_tpr([1.0], [0.0], tpr=0)


def test_mean_metrics():
    per = {"a": {"fpr95": 0.2, "auroc": 0.8, "aupr_in": 0.5, "aupr_out": 0.5},
           "b": {"fpr95": 0.4, "auroc": 0.6, "aupr_in": 0.7, "aupr_out": 0.1}}
    assert mean_metrics(per) == pytest.approx({"fpr95": 0.3, "auroc": 0.7, "aupr_in": 0.6, "aupr_out": 0.3})


@pytest.mark.parametrize("tpr", [0.95, 0.9, 0.5, 1.0, 0.3])
def test_resampled_fpr_equals_one_roc_curve_per_resample(tpr):
    """Ties included (scores rounded to a few values): the partial-sort FPR equals fpr_at_tpr on every resample."""
    from watermark_ood.evaluation.metrics import fpr_at_tpr_resampled

    rng = np.random.default_rng(0)
    ids, outs = np.round(rng.normal(1, 1, 301), 1), np.round(rng.normal(0, 1, 157), 1)
    id_rows, out_rows = rng.integers(0, 301, (40, 301)), rng.integers(0, 157, (40, 157))
    fast = fpr_at_tpr_resampled(ids, outs, id_rows, out_rows, tpr)
    slow = [fpr_at_tpr(ids[i], outs[o], tpr) for i, o in zip(id_rows, out_rows)]
    assert fast.tolist() == pytest.approx(slow, abs=0)
    assert len(set(slow)) > 3  # the resamples differ, so the comparison is not between constants
