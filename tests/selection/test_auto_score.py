"""The rules the README states about ``--score auto``, one test each, so that changing a rule fails a test: the
default pool, the ranking's outlier kinds, the watermark's accuracy limit and must-win-every-kind guard, the
tie-break, and combinations as the mean of z-scores taken on held-out ID data."""

import numpy as np
import pytest
import torch
from conftest import make_images

from watermark_ood.data.synthetic import OUTLIER_KINDS, RANKING_KINDS, kind_rows
from watermark_ood.detection.detector import Detector
from watermark_ood.detection.posthoc import Combination, PosthocScore
from watermark_ood.detection.registry import AUTO_CANDIDATES, SCORE_NAMES
from watermark_ood.evaluation.metrics import fpr_at_tpr
from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.runtime.inference import logits_and_features
from watermark_ood.selection.auto_score import SelectionSettings, _key, select_detector, selection_splits
from watermark_ood.selection.auto_score import watermark_refusal
from watermark_ood.selection.pools import DEFAULT_POOL

CPU = ExecutionConfig(device="cpu")
WINS_EVERY_KIND = {"per_kind": {"patch-shuffle": 0.1, "greyscale": 0.2}}
PLAIN = {"per_kind": {"patch-shuffle": 0.3, "greyscale": 0.3}}


def test_the_default_pool_is_every_detector_but_combood_and_mcd():
    """README: `--candidates shipped` by default, every detector but combood and mcd, and the kinds added since the
    pool test that no test has adopted yet."""
    assert set(AUTO_CANDIDATES) == set(SCORE_NAMES) - {"combood", "mcd", "mahalanobis-pp", "neco"}
    assert tuple(SelectionSettings().candidates) == AUTO_CANDIDATES and set(DEFAULT_POOL) == {"shipped"}
    assert tuple(SelectionSettings().combine) == (2, 3)  # README: combinations of the best two and three


def test_the_ranking_kinds_are_those_that_destroy_the_object():
    """README: the ranking's FPR95 is taken over patch-shuffled and phase-scrambled images, low-frequency noise and
    flat colours; greyscale and rotated copies keep the object and are not ranked on (they still guard
    watermarks, so they are always made)."""
    assert set(RANKING_KINDS) == {"patch-shuffle", "phase-scramble", "low-frequency-noise", "flat-colour"}
    assert tuple(SelectionSettings().ranking_kinds) == RANKING_KINDS
    assert {"greyscale", "rotate90"} <= set(OUTLIER_KINDS) and not {"greyscale", "rotate90"} & set(RANKING_KINDS)


def test_the_ranking_fpr95_is_over_the_ranking_kinds_rows_only(trained_toy):
    """The criterion is recomputed by hand from the shipped detector's own scores on the same images."""
    from watermark_ood.data.synthetic import synthesize_outliers, synthesized_kinds

    model, norm, train = trained_toy
    settings = SelectionSettings(candidates=("energy", "knn"), combine=(), fit_images=200, rank_images=60,
                                 calibration_images=20, holdout_fraction=0.4)
    selection = select_detector(model, norm, train, settings=settings, execution=CPU, log=None)
    fit_set, z_set, rank_id, _ = selection_splits(train, settings)
    made = synthesized_kinds(settings.ranking_kinds)
    outliers = synthesize_outliers(rank_id, settings.seed, made)
    rows = kind_rows(len(outliers), settings.ranking_kinds, made)
    assert 0 < len(rows) < len(outliers)  # the greyscale and rotated rows are left out
    for name in ("energy", "knn"):
        detector = Detector(model, norm, None, name, execution=CPU)
        detector.fit_shared(fit_set, logits_and_features(model, fit_set, norm, None, CPU),
                            logits_and_features(model, z_set, norm, None, CPU))
        row = next(r for r in selection.ranking if r["score"] == name)
        assert row["ranking_fpr95"] == fpr_at_tpr(detector.scores(rank_id), detector.scores(outliers)[rows])


@pytest.mark.parametrize("drop, admitted", [(0.0, True), (0.0099, True), (0.0100, True), (0.0101, False),
                                            (0.0149, False)])
def test_a_watermark_may_cost_at_most_one_point_of_accuracy(drop, admitted):
    """README: a watermarked candidate is admitted only if it costs at most 1 point of accuracy."""
    reason = watermark_refusal(WINS_EVERY_KIND, PLAIN, drop, SelectionSettings())
    assert (reason is None) == admitted
    if not admitted:
        assert reason.startswith(f"costs {100 * drop:.1f} points of accuracy (at most 1.0 allowed)")


@pytest.mark.parametrize("greyscale, admitted", [(0.29, True), (0.30, True), (0.301, False), (0.9, False)])
def test_a_watermark_must_win_on_every_outlier_kind_ranked_or_not(greyscale, admitted):
    """README: ... and wins on every outlier kind, greyscale and rotated copies included (a tie is no loss)."""
    row = {"per_kind": {"patch-shuffle": 0.0, "greyscale": greyscale}}
    reason = watermark_refusal(row, PLAIN, 0.0, SelectionSettings())
    assert (reason is None) == admitted
    if not admitted:
        assert reason.startswith("loses to no watermark on greyscale")
    assert SelectionSettings().watermark_must_win_every_kind


def test_ties_are_broken_by_fewer_fitted_values_to_ship():
    """README/detector.md: equal FPR95 and AUROC rank the detector with the smaller file first; usable and admitted
    candidates come before the others whatever their figures."""
    def row(name, fpr, auroc, values, **extra):
        return {"score": name, "ok": True, "ranking_fpr95": fpr, "ranking_auroc": auroc, "fitted_values": values,
                **extra}

    rows = [row("big", 0.1, 0.9, 5000), row("small", 0.1, 0.9, 10), row("none", 0.1, 0.9, 0),
            row("better", 0.05, 0.8, 9000), row("sharper", 0.1, 0.95, 9000),
            row("refused", 0.0, 1.0, 0, admitted=False), {"score": "broken", "ok": False, "error": "x"}]
    assert [r["score"] for r in sorted(rows, key=_key)] == ["better", "sharper", "none", "small", "big", "refused",
                                                             "broken"]


def test_a_combination_is_the_mean_of_z_scores_from_held_out_data(trained_toy):
    """The parts fit on one split; each part's mean and standard deviation come from another, held-out one; the
    score is the mean of the parts' z-scores. Computed here by hand."""
    model, norm, train = trained_toy
    fit_part, held = train.split(0.5, 3)
    fit_logits, fit_features = logits_and_features(model, fit_part, norm, None, CPU)
    held_logits, held_features = logits_and_features(model, held, norm, None, CPU)
    combo = Combination("knn+energy+msp").fit(fit_logits, fit_features, fit_part.labels, held_logits, held_features)
    test_logits, test_features = logits_and_features(model, make_images(30, seed=7), norm, None, CPU)
    parts = [PosthocScore(name).fit(fit_logits, fit_features, fit_part.labels) for name in ("knn", "energy", "msp")]
    z = []
    for part in parts:  # in float64 from the parts' float32 scores
        on_held = part(held_logits, held_features).double()
        z.append((part(test_logits, test_features).double() - on_held.mean()) / on_held.std())
    by_hand = torch.stack(z).mean(dim=0)
    # the detector computes in float32: its means and deviations of 150 scores carry ~1e-7 relative rounding,
    # which z-scores near 0 turn into 1e-4 absolute at most; a wrong mean or deviation moves them by ~1
    assert torch.allclose(combo(test_logits, test_features).double(), by_hand, rtol=1e-4, atol=1e-4)
    on_fit = [p(fit_logits, fit_features).double() for p in parts]  # what the audit's mutant used: not this
    assert not torch.allclose(combo.mean.double(), torch.stack([s.mean() for s in on_fit]), rtol=1e-3)


def test_score_auto_takes_a_combinations_z_statistics_from_its_own_held_out_part(trained_toy):
    """--score auto fits parts on its fit part and z-scores them on a disjoint part of the training data."""
    model, norm, train = trained_toy
    settings = SelectionSettings(candidates=("knn", "energy"), combine=(2,), fit_images=200, rank_images=40,
                                 calibration_images=20, holdout_fraction=0.4)
    fit_set, z_set, rank_id, calibration = selection_splits(train, settings)
    def image_keys(images):
        return {bytes(image.numpy()) for image in images.images}
    assert not image_keys(fit_set) & image_keys(z_set) and not image_keys(rank_id) & image_keys(calibration)
    detector = Detector(model, norm, None, "knn+energy", execution=CPU)
    detector.fit_shared(fit_set, logits_and_features(model, fit_set, norm, None, CPU),
                        logits_and_features(model, z_set, norm, None, CPU))
    z_logits, z_features = logits_and_features(model, z_set, norm, None, CPU)
    raw = torch.stack([part(z_logits, z_features) for part in detector.scorer.parts])
    assert torch.equal(detector.scorer.mean, raw.mean(dim=1)) and torch.equal(detector.scorer.std, raw.std(dim=1))
    assert np.all(detector.scorer.std.numpy() != 1.0)


def test_runners_up_better_in_a_fifth_of_the_resamples_are_named_too_close_to_call():
    """README: the candidates that beat the choice in at least 20% of the ranking's bootstrap resamples are named."""
    from watermark_ood.selection.auto_score import Selection

    def row(name, chance=None):
        return {"score": name, "watermark": "none", "ok": True, "ranking_fpr95": 0.1, "ranking_auroc": 0.9,
                **({} if chance is None else {"chance_better_than_chosen": chance})}

    summary = Selection(None, [row("chosen"), row("a", 0.2), row("b", 0.1999), row("c", 0.5)]).summary()
    assert summary["close"] == ["a (none)", "c (none)"] and summary["close_share"] == 0.2
