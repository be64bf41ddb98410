import json

import numpy as np
import pytest
import torch
from conftest import make_images, write_npz_dataset

from watermark_ood.cli import main
from watermark_ood.data.synthetic import OUTLIER_KINDS, outlier_kind_parts, patch_shuffle, synthesize_outliers
from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.selection.auto_preset import AutoSettings, auto_fit, candidate_configs
from watermark_ood.selection.validation import Validator, beats, binomial_se
from watermark_ood.watermark.config import get_preset


def test_patch_shuffle_keeps_pixels_and_moves_patches():
    images = make_images(4, size=8).images
    shuffled = patch_shuffle(images, 4, torch.Generator().manual_seed(0))
    assert torch.equal(shuffled.flatten(1).sort(1).values, images.flatten(1).sort(1).values)
    assert not torch.equal(shuffled, images)


def test_synthetic_outliers_are_seeded_and_unlabelled():
    source = make_images(30, size=8)
    a, b = synthesize_outliers(source, 1), synthesize_outliers(source, 1)
    assert torch.equal(a.images, b.images) and len(a) == 30 and (a.labels == -1).all()


def test_every_outlier_kind_has_its_share_and_its_character():
    source = make_images(50, size=8)
    out = synthesize_outliers(source, 0).images
    parts = outlier_kind_parts(len(out))
    assert list(parts) == list(OUTLIER_KINDS) and all(len(rows) == 10 for rows in parts.values())
    grey, flat = out[parts["greyscale"]], out[parts["flat-colour"]]
    assert (grey[:, 0] == grey[:, 1]).all() and (grey[:, 1] == grey[:, 2]).all()
    luma = (source.images[parts["greyscale"]].float() * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1)
    assert (grey[:, 0].float() - luma).abs().max() <= 0.5 + 1e-4
    assert (flat == flat[:, :, :1, :1]).all() and len({tuple(c) for c in flat[:, :, 0, 0].tolist()}) > 1


def test_candidates_include_the_preset_and_stabilized_variants():
    base = get_preset("cifar10", "energy").config()
    configs = candidate_configs(base)
    assert configs[0] == base
    assert all(c.linf_budget is not None and c.schedule == "cosine" for c in configs[1:])
    assert len({c for c in configs}) == len(configs)


def test_validator_accuracy_constraint(trained_toy):
    """The accuracy limit alone refuses a watermark: the outlier-kind rule is switched off by a huge tolerance, so
    the only difference between the two validators is max_accuracy_drop."""
    from conftest import make_images

    model, norm, _ = trained_toy
    val = make_images(90, seed=3)
    execution = ExecutionConfig(device="cpu")
    strict = Validator(model, norm, val, "msp", execution, max_accuracy_drop=0.01, tolerance=1e9)
    lax = Validator(model, norm, val, "msp", execution, max_accuracy_drop=1.0, tolerance=1e9)
    assert strict.baseline.accuracy > 0.9 and strict.baseline.accuracy_drop == 0 and strict.baseline.admissible
    harmful = torch.randn((1, 3, 8, 8), generator=torch.Generator().manual_seed(0)) * 20
    refused, allowed = strict(harmful), lax(harmful)
    assert refused.accuracy_drop > 0.1 and refused.accuracy_drop == allowed.accuracy_drop
    assert not refused.admissible and allowed.admissible
    assert refused.key > strict.baseline.key  # refused candidates sort after every admissible one


def test_validator_refuses_a_watermark_that_loses_on_any_outlier_kind(toy_model, toy_test, norm3):
    validator = Validator(toy_model, norm3, toy_test, "msp", ExecutionConfig(device="cpu"), max_accuracy_drop=1.0)
    assert list(validator.baseline.per_kind) == list(OUTLIER_KINDS)
    outcomes = [validator(torch.randn((1, 3, 8, 8), generator=torch.Generator().manual_seed(s)) * 3) for s in range(6)]
    for outcome in outcomes:
        lost = any(outcome.per_kind[k] > validator.baseline.per_kind[k] for k in OUTLIER_KINDS)
        assert outcome.admissible == (not lost)
    assert any(not o.admissible for o in outcomes)  # random large watermarks lose somewhere


def test_a_tolerance_admits_small_losses_and_asks_for_a_clear_win(toy_model, toy_test, norm3):
    execution = ExecutionConfig(device="cpu")
    strict = Validator(toy_model, norm3, toy_test, "msp", execution, max_accuracy_drop=1.0)
    loose = Validator(toy_model, norm3, toy_test, "msp", execution, max_accuracy_drop=1.0, tolerance=1.0)
    base, n = loose.baseline, loose.kind_counts
    assert sum(n.values()) == len(loose.outliers) and not base.beats_zero
    for seed in range(8):
        w = torch.randn((1, 3, 8, 8), generator=torch.Generator().manual_seed(seed)) * 0.5 * (seed % 4)
        a, b = strict(w), loose(w)
        assert a.per_kind == b.per_kind and a.fpr95 == b.fpr95
        lost = any(b.per_kind[k] > base.per_kind[k] + binomial_se(base.per_kind[k], n[k]) for k in OUTLIER_KINDS)
        assert b.admissible == (not lost) and (a.admissible <= b.admissible)  # tolerance only admits more...
        assert a.beats_zero == (a.fpr95 < base.fpr95) and (b.beats_zero <= a.beats_zero)  # ...and wins less
        assert b.beats_zero == beats(b.fpr95, base.fpr95, len(loose.outliers), 1.0)


def test_auto_fit_is_budgeted_and_reads_only_training_data(toy_model, toy_train, norm3):
    settings = AutoSettings(epochs=2, batch_size=16, seed=0, validation_fraction=0.25)
    result = auto_fit(toy_model, norm3, toy_train, "msp", settings, ExecutionConfig(device="cpu"))
    assert result.trials and all(t["steps"] >= 3 for t in result.trials)
    rounds = {t["round"] for t in result.trials}
    assert [sum(t["round"] == r for t in result.trials) for r in sorted(rounds)] == [8, 4, 2][: len(rounds)]
    assert result.watermark.tensor.shape == (1, 3, 8, 8)
    # on this toy no candidate beats the zero watermark on every kind, so it is kept (what ships when one wins is
    # test_auto_fit_ships_a_watermark_only_on_a_clear_win, with scripted validation outcomes)
    assert result.zero_kept and torch.count_nonzero(result.watermark.tensor) == 0
    assert result.chosen_validation is None or result.chosen_validation["fpr95"] >= result.baseline_validation["fpr95"] \
        or not result.chosen_validation.get("admissible", True)
    assert result.summary()["tolerance_se"] == 0.0


def test_auto_fit_with_a_tolerance_ships_only_clear_wins(toy_model, toy_train, norm3):
    settings = AutoSettings(epochs=2, batch_size=16, seed=0, validation_fraction=0.25, tolerance=2.0)
    result = auto_fit(toy_model, norm3, toy_train, "msp", settings, ExecutionConfig(device="cpu"))
    assert result.summary()["tolerance_se"] == 2.0 and all("beats_zero" in t for t in result.trials)
    # no trial beats the zero watermark by two standard errors here, so none ships (the shipping branch:
    # test_auto_fit_ships_a_watermark_only_on_a_clear_win)
    assert not any(t["beats_zero"] for t in result.trials) and result.zero_kept


def test_auto_choice_does_not_depend_on_the_ood_sets(tmp_path):
    data = write_npz_dataset(tmp_path / "toy", n_train=96, n_test=30)
    np.savez(tmp_path / "a.npz", x=np.random.default_rng(0).integers(0, 256, (30, 8, 8, 3), dtype=np.uint8))
    np.savez(tmp_path / "b.npz", x=np.full((30, 8, 8, 3), 200, np.uint8))
    chosen = []
    for name, ood in (("one", ["synthetic:uniform", str(tmp_path / "a.npz")]), ("two", [str(tmp_path / "b.npz")])):
        out = tmp_path / name
        assert main(["bench", "--model", "small_cnn", "--random-weights", "--device", "cpu", "--no-progress", "--preset", "auto",
                     "--objective", "energy", "--epochs", "2", "--batch-size", "16", "--id-data", str(data),
                     "--ood-data", *ood, "--out", str(out)]) == 0
        run = json.loads((out / "results.json").read_text())["runs"][0]
        assert run["preset"] == "auto" and "trials" in run["auto"]
        chosen.append((run["hyperparameters"], run["auto"]["trials"], run["auto"]["validation_chosen"]))
        from watermark_ood.watermark.file import Watermark

        assert Watermark.load(out / "watermark-energy.safetensors").metadata["hyperparameters"] == run["hyperparameters"]
    assert chosen[0] == chosen[1]


def test_validation_doctests():
    import doctest

    from watermark_ood.selection import validation

    assert doctest.testmod(validation).failed == 0


class ScriptedValidator:
    """Stands in for the Validator so both branches of auto_fit's decision run: a watermark's validation FPR95 is
    ``base - gain * |w|_max`` (capped), the zero watermark's is ``base``; wins use the real ``beats`` rule."""

    def __init__(self, gain, tolerance, n=200):
        from watermark_ood.selection.validation import ValidationOutcome

        self.gain, self.tolerance, self.n, self.Outcome = gain, tolerance, n, ValidationOutcome
        self.baseline = self.outcome(0.0)

    def outcome(self, size):
        fpr = min(0.9, max(0.0, 0.5 - self.gain * size))
        wins = size > 0 and beats(fpr, 0.5, self.n, self.tolerance)
        return self.Outcome(fpr, 1 - fpr, 0.9, 0.0, True, {"noise": fpr}, wins)

    def __call__(self, w):
        return self.outcome(float(w.abs().max()))


@pytest.mark.parametrize("gain, tolerance, ships", [(1.0, 0.0, True), (-1.0, 0.0, False), (1e-4, 2.0, False)])
def test_auto_fit_ships_a_watermark_only_on_a_clear_win(monkeypatch, toy_model, toy_train, norm3, gain, tolerance,
                                                        ships):
    """A winning watermark is shipped with its validation record; a losing one, or a win smaller than the
    tolerance's standard errors, keeps the zero watermark."""
    import watermark_ood.selection.auto_preset as tuning

    monkeypatch.setattr(tuning, "Validator", lambda *a, **k: ScriptedValidator(gain, tolerance))
    settings = AutoSettings(epochs=2, batch_size=16, seed=0, validation_fraction=0.25, tolerance=tolerance)
    result = auto_fit(toy_model, norm3, toy_train, "msp", settings, ExecutionConfig(device="cpu"))
    assert result.zero_kept == (not ships)
    if ships:
        assert torch.count_nonzero(result.watermark.tensor) > 0 and result.config is not None
        assert result.watermark.metadata["auto"]["validation"]["beats_zero"]
        assert result.chosen_validation["fpr95"] < result.baseline_validation["fpr95"]
    else:
        assert torch.count_nonzero(result.watermark.tensor) == 0 and "zero watermark kept" in \
            result.watermark.metadata["auto"]
