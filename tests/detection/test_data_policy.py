"""One policy shares out the ID training data for named scores, --score auto and the leaderboards: the parts are
disjoint, seeded, of the policy's sizes, and every caller takes them from it."""

import torch

from conftest import make_images
from watermark_ood.detection.data_policy import AUTO, NAMED, DataPolicy, z_split
from watermark_ood.detection.detector import Detector
from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.selection.auto_score import SelectionSettings, selection_splits


def _ids(images):
    """Each toy image is distinct: its bytes identify it."""
    return {bytes(x.numpy().tobytes()) for x in images.images}


def test_the_fit_and_z_parts_are_disjoint_seeded_and_sized_by_the_policy():
    images = make_images(400, seed=3)
    policy = DataPolicy(holdout_fraction=0.1, calibration_images=50, fit_images=100)
    fit, z = policy.fit_and_z(images, seed=1)
    assert (len(fit), len(z)) == (100, 25) and not _ids(fit) & _ids(z)
    again = policy.fit_and_z(images, seed=1)
    assert torch.equal(again[0].images, fit.images) and torch.equal(again[1].images, z.images)
    assert not torch.equal(policy.fit_and_z(images, seed=2)[0].images, fit.images)
    assert len(z_split(images, 0)[1]) == 80  # the whole 20% (a leaderboard fits on all it is given)
    tiny = images.subset(torch.arange(4))
    assert all(part is tiny for part in z_split(tiny, 0))  # too small to split: both parts are the set


def test_auto_takes_its_parts_from_the_policy():
    train = make_images(1000, seed=4)
    settings = SelectionSettings(fit_images=200, rank_images=40)
    fit, z, rank, calibration = selection_splits(train, settings)
    assert (settings.holdout_fraction, settings.calibration_images) == (AUTO.holdout_fraction,
                                                                         AUTO.calibration_images)
    held = round(AUTO.holdout_fraction * len(train))
    assert (len(fit), len(z), len(rank), len(calibration)) == (200, 50, 40, held - held // 2)
    parts = [_ids(p) for p in (fit, z, rank, calibration)]
    assert all(not parts[i] & parts[j] for i in range(4) for j in range(i + 1, 4))
    expected_fit, expected_z = AUTO.fit_and_z(train.split(AUTO.holdout_fraction, 0)[0], 0, 200)
    assert torch.equal(fit.images, expected_fit.images) and torch.equal(z.images, expected_z.images)


def test_a_combination_takes_its_z_scores_from_the_policys_held_out_part(trained_toy):
    """Detector.fit of a combination: the parts' means and stds are those of the policy's z part."""
    model, norm, train = trained_toy
    cpu = ExecutionConfig(device="cpu")
    detector = Detector(model, norm, None, "energy+msp", execution=cpu).fit(train, limit=40, seed=3)
    _, z = NAMED.fit_and_z(train, 3, 40)
    raw = torch.stack([torch.as_tensor(Detector(model, norm, None, part, execution=cpu).scores(z))
                       for part in ("energy", "msp")])
    assert torch.allclose(detector.scorer.mean, raw.mean(dim=1), rtol=1e-6)
    assert torch.allclose(detector.scorer.std, raw.std(dim=1), rtol=1e-5)
