"""The selection's shared layer pass (equal to each detector's own pass) and its racing of own-pass candidates."""

import numpy as np
import pytest
import torch

from watermark_ood.data.images import ImageSet
from watermark_ood.data.preprocessing import Normalization
from watermark_ood.detection.detector import Detector
from watermark_ood.models.architectures import cifar_resnet
from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.selection import shared_passes
from watermark_ood.selection.shared_passes import Race, plain_outputs, score_in_heats, shared_outputs

CPU = ExecutionConfig(device="cpu")


def test_one_shared_pass_gives_each_layer_detector_and_the_plain_candidates_their_own_outputs():
    torch.manual_seed(0)
    model, norm = cifar_resnet(8).eval(), Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    images = ImageSet((torch.rand(50, 3, 16, 16) * 255).to(torch.uint8), torch.arange(50) % 10, "x")
    detectors = [Detector(model, norm, None, name, execution=CPU) for name in ("multimahalanobis", "gram", "combood")]
    plain, shared = shared_outputs(model, norm, None, CPU, detectors, {"x": images, "z": images}, images.image_shape)
    assert set(shared["gram"]) == {"x"}  # the combinations' z-score set: plain outputs only
    for key in ("x", "z"):  # the penultimate features of the same pass equal a plain pass's
        expected = plain_outputs(model, norm, None, images, CPU)
        assert torch.equal(plain[key][0], expected[0]) and torch.allclose(plain[key][1], expected[1], atol=1e-6)
    for detector in detectors:
        logits, features = shared[detector.score]["x"]
        own_logits, own_features = detector.outputs(images)
        assert torch.equal(logits, own_logits)
        assert features.shape == own_features.shape and torch.allclose(features, own_features, rtol=1e-6, atol=1e-6)
    assert shared["gram"]["x"][1].shape[1] == 3 * shared["multimahalanobis"]["x"][1].shape[1]


class _Rows:
    """An image set stand-in: which rows of which set ("id" or "out") a subset holds."""

    def __init__(self, origin, rows):
        self.origin, self.rows = origin, np.asarray(rows)

    def __len__(self):
        return len(self.rows)

    def subset(self, indices):
        return _Rows(self.origin, self.rows[np.asarray(indices)])


class _Table:
    """A detector stand-in whose score of a row is read from a table; counts the rows it scored."""

    def __init__(self, ids, outs):
        self.tables, self.rows = {"id": ids, "out": outs}, 0

    def scores(self, images):
        self.rows += len(images)
        return self.tables[images.origin][images.rows]


def test_racing_drops_a_far_worse_candidate_after_its_first_heat_and_keeps_a_close_one_exactly():
    rng = np.random.default_rng(0)
    s_id, s_out = rng.normal(6, 1, 90), rng.normal(0, 1, 120)
    rank_id, outliers = _Rows("id", np.arange(90)), _Rows("out", np.arange(120))
    race = Race.of(90, np.arange(0, 120, 2))  # every other outlier is of a ranked kind
    assert race.id_rows.tolist() == list(range(0, 90, 3)) and race.out_rows.tolist() == list(range(0, 120, 6))
    close = _Table(s_id, s_out)
    full_id, full_out, raced = score_in_heats(close, rank_id, outliers, race, best_heat=0.0)
    assert raced is None and np.array_equal(full_id, s_id) and np.array_equal(full_out, s_out)
    assert close.rows == 90 + 120  # every row once: the heat's, then the rest
    noise = _Table(rng.normal(0, 1, 90), rng.normal(0, 1, 120))
    heat_id, heat_out, raced = score_in_heats(noise, rank_id, outliers, race, best_heat=0.0)
    assert raced is not None and raced > shared_passes.RACE_MARGIN
    assert (len(heat_id), len(heat_out)) == (30, 20) and noise.rows == 50  # stopped after the heat
    from watermark_ood.evaluation.metrics import fpr_at_tpr

    assert race.heat_fpr(s_id, s_out[race.ranked_rows]) == fpr_at_tpr(s_id[0::3], s_out[0::6])


def test_selection_reports_raced_out_candidates_and_keeps_the_figures_of_the_others(trained_toy, monkeypatch):
    from watermark_ood.selection.auto_score import SelectionSettings, select_detector

    model, norm, train = trained_toy
    settings = SelectionSettings(candidates=("odin", "energy", "knn"), combine=(), fit_images=200, rank_images=60,
                                 calibration_images=40, holdout_fraction=0.5, resamples=20)
    kept = {r["score"]: r for r in select_detector(model, norm, train, settings=settings, execution=CPU).ranking}
    assert not kept["odin"].get("raced_out") and kept["odin"]["own_passes"]  # within 5 points, or ranked first
    monkeypatch.setattr(shared_passes, "RACE_MARGIN", -2.0)  # every own-pass candidate is raced out
    selection = select_detector(model, norm, train, settings=settings, execution=CPU)
    rows = {r["score"]: r for r in selection.ranking}
    assert rows["odin"]["raced_out"] and rows["odin"]["admitted"] is False and "raced out" in rows["odin"]["refused"]
    assert selection.detector.score != "odin" and selection.ranking[-1]["score"] == "odin"
    for name in ("energy", "knn"):  # the candidates ranked on every row are untouched by the race
        assert rows[name]["ranking_fpr95"] == kept[name]["ranking_fpr95"] and "heat_fpr95" in rows[name]
    if kept["odin"]["ranking_fpr95"] > min(kept[n]["heat_fpr95"] for n in ("energy", "knn")) + 0.05:
        pytest.fail("odin should have been raced out at the shipped margin")
