import copy

import pytest
import torch
from conftest import make_images

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.core.randomness import generator
from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.watermark.config import FitConfig
from watermark_ood.watermark.learner import WatermarkLearner
from watermark_ood.watermark.objectives import objective_loss

CPU = ExecutionConfig(device="cpu")


def small_config(**kw):
    base = dict(objective="msp", sigma=0.5, rho=0.5, beta=1.0, alpha=0.01, epochs=3, batch_size=16, seed=0)
    base.update(kw)
    return FitConfig(**base)


def full_objective(model, norm, data, w, cfg):
    """The objective over all data and a fixed noise batch, without flips: a stable yardstick."""
    g = torch.Generator().manual_seed(123)
    x = norm(data.images)
    noise = torch.randn(x.shape, generator=g) * cfg.sigma
    with torch.no_grad():
        logits = model(torch.cat([x, noise]) + w)
        at_zero = torch.logsumexp(model(noise), dim=1)
    return float(objective_loss(cfg, logits[: len(x)], data.labels, logits[len(x):], lse_out_at_zero=at_zero))


@pytest.mark.parametrize("objective", ["msp", "energy", "hinge", "anchored"])
def test_fit_reduces_objective_and_leaves_weights_unchanged(toy_model, toy_train, norm3, objective):
    cfg = small_config(objective=objective, epochs=4, t_in=0.5, t_out=0.5, beta=0.5)
    if objective in ("hinge", "anchored"):
        cfg = WatermarkLearner(toy_model, norm3, cfg, CPU).resolve_margins(toy_train, cfg, torch.device("cpu"))
    before = copy.deepcopy(toy_model.state_dict())
    flags = [p.requires_grad for p in toy_model.parameters()]
    start = full_objective(toy_model, norm3, toy_train, torch.zeros(1, 3, 8, 8), cfg)
    result = WatermarkLearner(toy_model, norm3, cfg, CPU).fit(toy_train, progress=False)
    end = full_objective(toy_model, norm3, toy_train, result.watermark.tensor, cfg)
    assert end < start
    after = toy_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [p.requires_grad for p in toy_model.parameters()] == flags
    assert result.watermark.tensor.shape == (1, 3, 8, 8)
    assert [r.epoch for r in result.history] == [1, 2, 3, 4]
    assert result.watermark.metadata["objective"] == objective


def test_same_seed_same_watermark_other_seed_differs(toy_model, toy_train, norm3):
    a = WatermarkLearner(toy_model, norm3, small_config(seed=5), CPU).fit(toy_train, progress=False)
    b = WatermarkLearner(toy_model, norm3, small_config(seed=5), CPU).fit(toy_train, progress=False)
    c = WatermarkLearner(toy_model, norm3, small_config(seed=6), CPU).fit(toy_train, progress=False)
    assert torch.equal(a.watermark.tensor, b.watermark.tensor)
    assert not torch.equal(a.watermark.tensor, c.watermark.tensor)


def test_one_step_is_the_papers_sharpness_aware_sign_update(toy_model, toy_train, norm3):
    cfg = small_config(epochs=1, batch_size=64, hflip=False, rho=0.7, alpha=0.02)
    learner = WatermarkLearner(toy_model, norm3, cfg, ExecutionConfig(device="cpu", channels_last=False))
    result = learner.fit(toy_train, progress=False)
    # Recompute the single step by hand with the learner's documented randomness.
    from watermark_ood.watermark.learner import PERMUTATION_TAG

    order = torch.randperm(64, generator=generator(torch.device("cpu"), cfg.seed, PERMUTATION_TAG, 0))
    rng = generator(torch.device("cpu"), cfg.seed, 0, 0)
    x, y, noise = learner.batch(toy_train.images[order], toy_train.labels[order], 64, torch.arange(64), rng,
                                torch.device("cpu"))

    def grad(w):
        w = w.clone().requires_grad_(True)
        logits = toy_model(torch.cat([x, noise]) + w)
        loss = objective_loss(cfg, logits[:64], y, logits[64:])
        return torch.autograd.grad(loss, w)[0]

    w0 = torch.zeros(1, 3, 8, 8)
    g1 = grad(w0)
    e = g1.sign() * g1.abs() / (g1 ** 2).sum().sqrt()
    expected = w0 - 0.02 * torch.sign(grad(w0 + 0.7 * e))
    assert torch.allclose(result.watermark.tensor, expected)
    assert torch.allclose(result.watermark.tensor.abs(), torch.full((1, 3, 8, 8), 0.02))


def test_train_limit_and_history_callback(toy_model, toy_train, norm3):
    seen = []
    cfg = small_config(epochs=2, train_limit=32)
    result = WatermarkLearner(toy_model, norm3, cfg, CPU).fit(
        toy_train, progress=False, callback=lambda rec, w: seen.append((rec.epoch, w.shape)))
    assert seen == [(1, (1, 3, 8, 8)), (2, (1, 3, 8, 8))]
    assert result.images_seen == 64 and all(r.steps == 2 for r in result.history)
    assert result.history[-1].max_abs <= 2 * 0.01 + 2 * 0.001 + 1e-6


def test_linf_budget_is_respected(toy_model, toy_train, norm3):
    result = WatermarkLearner(toy_model, norm3, small_config(alpha=0.05, linf_budget=0.03), CPU).fit(
        toy_train, progress=False)
    assert result.watermark.tensor.abs().max() <= 0.03 + 1e-7


def test_resume_from_checkpoint_is_exact(toy_model, toy_train, norm3, tmp_path):
    cfg = small_config(epochs=3)
    full = WatermarkLearner(toy_model, norm3, cfg, CPU).fit(toy_train, progress=False)
    learner = WatermarkLearner(toy_model, norm3, cfg, CPU)
    calls = {"n": 0}

    def stop_after_five(record, w):
        pass

    # Interrupt mid-epoch: request a stop after a few steps via the flag.
    original_batch = learner.batch

    def counting_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            learner.stop_requested = True
        return original_batch(*args, **kwargs)

    learner.batch = counting_batch
    from watermark_ood.watermark.learner import StopRequested

    with pytest.raises(StopRequested):
        learner.fit(toy_train, progress=False, checkpoint_dir=tmp_path, checkpoint_every=1000)
    resumed = WatermarkLearner(toy_model, norm3, cfg, CPU).fit(toy_train, progress=False, checkpoint_dir=tmp_path)
    assert resumed.resumed_from_step == 6
    assert torch.equal(resumed.watermark.tensor, full.watermark.tensor)


def test_checkpoint_from_other_config_is_refused(toy_model, toy_train, norm3, tmp_path):
    WatermarkLearner(toy_model, norm3, small_config(epochs=1), CPU).fit(toy_train, progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(WatermarkOODError, match="different"):
        WatermarkLearner(toy_model, norm3, small_config(epochs=1, sigma=0.9), CPU).fit(
            toy_train, progress=False, checkpoint_dir=tmp_path)


def test_nan_loss_stops_with_a_clear_message(toy_model, toy_train, norm3):
    cfg = small_config(objective="energy", beta=1.0, t_in=1e6, t_out=1e6)
    with pytest.raises(WatermarkOODError, match="epoch 1, step 1"):
        WatermarkLearner(toy_model, norm3, cfg, CPU).fit(toy_train, progress=False)


def test_unlabelled_or_mismatched_data_is_refused(toy_model, toy_train, norm3):
    from watermark_ood.data.images import ImageSet
    from watermark_ood.data.preprocessing import Normalization

    unlabelled = ImageSet(toy_train.images, torch.full((64,), -1), "ood")
    with pytest.raises(WatermarkOODError, match="labels"):
        WatermarkLearner(toy_model, norm3, small_config(), CPU).fit(unlabelled, progress=False)
    with pytest.raises(WatermarkOODError, match="channels"):
        WatermarkLearner(toy_model, Normalization((0.5,), (0.5,)), small_config(), CPU).fit(toy_train, progress=False)


def test_bf16_autocast_runs_and_stays_close(toy_model, toy_train, norm3):
    fp32 = WatermarkLearner(toy_model, norm3, small_config(epochs=1), CPU).fit(toy_train, progress=False)
    bf16 = WatermarkLearner(toy_model, norm3, small_config(epochs=1),
                            ExecutionConfig(device="cpu", precision="bf16")).fit(toy_train, progress=False)
    # Sign updates: each pixel differs by 0 or a multiple of alpha. A pixel whose gradient is near zero may take the
    # other sign in bf16 (8-bit mantissa): 85% of the pixels agree after these 4 steps on this machine. Unrelated
    # watermarks agree where all 4 signs do, far below 75%; 0.75 leaves ten points for other CPUs' rounding.
    agree = (fp32.watermark.tensor - bf16.watermark.tensor).abs() < 1e-6
    assert agree.float().mean() > 0.75


def test_max_steps_ends_early_with_the_same_prefix(toy_model, toy_train, norm3):
    cfg = small_config(epochs=2)
    short = WatermarkLearner(toy_model, norm3, cfg.replace(epochs=1), CPU).fit(toy_train, progress=False, max_steps=2)
    capped = WatermarkLearner(toy_model, norm3, cfg, CPU).fit(toy_train, progress=False, max_steps=2)
    assert short.images_seen == capped.images_seen == 32
    assert torch.equal(short.watermark.tensor, capped.watermark.tensor)


def test_mosaic_surrogates_are_patches_of_the_batch():
    from watermark_ood.data.synthetic import mosaic

    x = torch.arange(4 * 3 * 16 * 16, dtype=torch.float32).reshape(4, 3, 16, 16)
    out = mosaic(x, generator(torch.device("cpu"), 0, 1))
    assert out.shape == x.shape
    tiles = {tuple(t.flatten().tolist()) for t in x.unfold(2, 8, 8).unfold(3, 8, 8).permute(0, 2, 3, 1, 4, 5)
             .reshape(-1, 3, 8, 8)}
    got = out.unfold(2, 8, 8).unfold(3, 8, 8).permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, 8, 8)
    assert all(tuple(t.flatten().tolist()) in tiles for t in got)  # every patch is a whole patch of some input
    assert not torch.equal(out, x)
    small = mosaic(torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8), generator(torch.device("cpu"), 0, 2))
    assert small.shape == (2, 1, 8, 8)  # 8x8 images get 4x4 patches, so a mosaic is never one whole input image
    with pytest.raises(WatermarkOODError, match="at least 2x2"):
        mosaic(torch.zeros(2, 3, 1, 4), generator(torch.device("cpu"), 0, 1))


def test_fit_with_mosaic_surrogates_uses_no_gaussian_noise(toy_model, toy_train, norm3, monkeypatch):
    cfg = small_config(epochs=1, surrogate="mosaic")
    monkeypatch.setattr(torch, "randn", lambda *a, **k: (_ for _ in ()).throw(AssertionError("noise drawn")))
    result = WatermarkLearner(toy_model, norm3, cfg, CPU).fit(toy_train, progress=False)
    assert result.watermark.tensor.abs().max() > 0
    assert result.watermark.metadata["hyperparameters"]["surrogate"] == "mosaic"
    assert "surrogate" not in small_config().hyperparameters()  # paper runs keep their results.json unchanged
    with pytest.raises(WatermarkOODError, match="surrogate"):
        small_config(surrogate="uniform")


def test_mixed_surrogates_are_noise_flat_colours_and_grey_copies_sliced_like_the_noise(norm3):
    from watermark_ood.data.synthetic import flat_and_grey

    x = norm3(torch.randint(0, 256, (400, 3, 4, 4), dtype=torch.uint8))
    noise = torch.randn(400, 3, 4, 4)
    out = flat_and_grey(x, noise, norm3, 400, torch.arange(400), generator(torch.device("cpu"), 0, 1))
    mean, std = torch.tensor(norm3.mean).view(1, 3, 1, 1), torch.tensor(norm3.std).view(1, 3, 1, 1)
    pixels = out * std + mean
    kept = (out == noise).flatten(1).all(1)
    flat = (pixels == pixels[:, :, :1, :1]).flatten(1).all(1) & ~kept
    grey = ((pixels[:, 0] - pixels[:, 1]).abs() < 1e-5).flatten(1).all(1) & ~flat & ~kept
    assert (kept | flat | grey).all()
    assert 150 < kept.sum() < 250 and 70 < flat.sum() < 130 and 70 < grey.sum() < 130
    luma = ((x * std + mean) * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1)
    assert torch.allclose(pixels[grey][:, 0], luma[grey], atol=1e-5)
    # a torchrun rank's rows get exactly the surrogates a single process gives them
    rows = torch.arange(200, 400)
    part = flat_and_grey(x[rows], noise[rows], norm3, 400, rows, generator(torch.device("cpu"), 0, 1))
    assert torch.equal(part, out[rows])


def test_fit_with_mixed_surrogates_records_them(toy_model, toy_train, norm3):
    result = WatermarkLearner(toy_model, norm3, small_config(epochs=1, surrogate="mixed"), CPU).fit(toy_train,
                                                                                                 progress=False)
    plain = WatermarkLearner(toy_model, norm3, small_config(epochs=1), CPU).fit(toy_train, progress=False)
    assert result.watermark.metadata["hyperparameters"]["surrogate"] == "mixed"
    assert not torch.equal(result.watermark.tensor, plain.watermark.tensor)


def test_graph_capture_failure_falls_back_to_eager_steps(toy_model, toy_train, norm3, monkeypatch):
    from watermark_ood.watermark import learner, step

    expected = WatermarkLearner(toy_model, norm3, small_config(epochs=1), CPU).fit(toy_train, progress=False)

    class Uncapturable:
        def __init__(self, *args):
            raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(step, "graphs_apply", lambda execution, device: True)
    monkeypatch.setattr(learner, "StepGraph", Uncapturable)
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed.*eager steps"):
        result = WatermarkLearner(toy_model, norm3, small_config(epochs=1), CPU).fit(toy_train, progress=False)
    assert torch.equal(result.watermark.tensor, expected.watermark.tensor)


def test_hinge_margins_come_from_id_logsumexp_quantiles_and_are_recorded(toy_model, toy_train, norm3, tmp_path):
    cfg = small_config(objective="hinge", epochs=2, beta=0.5)
    result = WatermarkLearner(toy_model, norm3, cfg, CPU).fit(toy_train, progress=False, checkpoint_dir=tmp_path)
    with torch.no_grad():
        lse = torch.logsumexp(toy_model(norm3(toy_train.images)), 1).double()
    hp = result.watermark.metadata["hyperparameters"]
    assert hp["m_in"] == pytest.approx(float(lse.quantile(0.5)), abs=1e-3)
    assert hp["m_out"] == pytest.approx(float(lse.quantile(0.05)), abs=1e-3)
    assert hp["m_out"] < hp["m_in"]
    # The same command resumes from its checkpoint: the resolved margins identify the same run.
    again = WatermarkLearner(toy_model, norm3, cfg, CPU).fit(toy_train, progress=False, checkpoint_dir=tmp_path)
    assert torch.equal(again.watermark.tensor, result.watermark.tensor)
    fixed = WatermarkLearner(toy_model, norm3, cfg.replace(m_in=9.0, m_out=1.0), CPU).fit(toy_train, progress=False)
    assert (fixed.watermark.metadata["hyperparameters"]["m_in"], fixed.watermark.metadata["hyperparameters"]["m_out"]) \
        == (9.0, 1.0)


def test_features_objective_learns_on_penultimate_features_with_margins_from_id(trained_toy):
    from watermark_ood.watermark.config import get_preset
    from watermark_ood.watermark.objectives import class_mean_distance

    model, norm, train = trained_toy
    cfg = get_preset("cifar10", "features").config(epochs=1, batch_size=32, hflip=False)
    learner = WatermarkLearner(model, norm, cfg, CPU)
    result = learner.fit(train, progress=False)
    hp = result.watermark.metadata["hyperparameters"]
    assert hp["objective"] == "features" and 0 <= hp["m_in"] < hp["m_out"] <= 2
    from watermark_ood.runtime.inference import logits_and_features

    _, feats = logits_and_features(model, train, norm, None, CPU)
    distance = class_mean_distance(feats, learner.anchors.cpu()).double()
    assert hp["m_in"] == pytest.approx(float(distance.quantile(0.5)), abs=1e-5)
    assert hp["m_out"] == pytest.approx(float(distance.quantile(0.95)), abs=1e-5)
    assert result.history[0].ood_term is not None and torch.count_nonzero(result.watermark.tensor) > 0


def test_labels_beyond_the_models_outputs_are_one_line_errors(toy_model, norm3):
    four_classes = make_images(40, classes=4, seed=3)
    with pytest.raises(WatermarkOODError, match="labels go up to 3 but the model has 3 outputs"):
        WatermarkLearner(toy_model, norm3, small_config(), CPU).fit(four_classes, progress=False)
