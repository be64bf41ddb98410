"""Decisions users can trust (issue 28): the guarantees hold over seeded re-splits, p-values are uniform on ID
inputs and small on far-OOD ones, the shift alarm fires on mixtures and not on ID data."""

import numpy as np
import pytest
import torch
from conftest import CLI_TOY, calibrated_toy_detector, make_images
from scipy.stats import kstest

from watermark_ood.cli import main
from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.data.synthetic import uniform_set
from watermark_ood.detection.conformal import (calibrate, conformal_rank, conformal_threshold, min_calibration_size,
                                               p_values, shift_test)
from watermark_ood.detection.detector import Detector
from watermark_ood.runtime.device import ExecutionConfig

CPU = ExecutionConfig(device="cpu")
SPLITS = 200


@pytest.fixture(scope="module")
def pool(trained_toy):
    """Scores and predicted classes of 3,000 ID images and 500 noise images under a fitted KNN detector."""
    model, norm, train = trained_toy
    detector = Detector(model, norm, score="knn", execution=CPU).fit(train)
    ids = make_images(3000, seed=21)
    scores, classes = detector._scores_and_classes(ids)
    noise = detector.scores(uniform_set(500, ids.image_shape, 3))
    return detector, scores.astype(np.float64), classes, noise


def test_rank_and_minimum_size():
    assert conformal_rank(19, 0.95) == 1 and conformal_rank(99, 0.99) == 1 and min_calibration_size(0.95) == 19
    with pytest.raises(WatermarkOODError, match="18 calibration images cannot support tpr 0.95.*at least 19"):
        conformal_rank(18, 0.95)
    for bad in (0.0, 1.0, -0.5, 1.5):
        with pytest.raises(WatermarkOODError, match=r"\(0, 1\)"):
            conformal_rank(100, bad)


@pytest.mark.parametrize("n, tpr", [(40, 0.9), (200, 0.95), (1000, 0.95)])
def test_false_rejection_rate_over_seeded_resplits(pool, n, tpr):
    """Mean false-rejection rate over 200 re-splits <= 1 - tpr (within its binomial band), and not far below."""
    _, scores, _, _ = pool
    alpha, rates = 1 - tpr, []
    for seed in range(SPLITS):
        order = np.random.default_rng(seed).permutation(len(scores))
        cal, held = scores[order[:n]], scores[order[n:]]
        rates.append(float(np.mean(held < conformal_threshold(cal, tpr))))
    k = conformal_rank(n, tpr)
    band = 3 * np.std(rates) / np.sqrt(SPLITS)
    assert np.mean(rates) <= k / (n + 1) + band <= alpha + band
    assert np.mean(rates) >= k / (n + 1) - 1 / (n + 1) - band  # exact, not merely conservative (distinct scores)


def test_per_class_guarantee_over_resplits(pool):
    _, scores, classes, _ = pool
    tpr, n = 0.9, 600
    per_class = {c: [] for c in range(3)}
    for seed in range(SPLITS):
        order = np.random.default_rng(seed).permutation(len(scores))
        cal, held = order[:n], order[n:]
        calibration = calibrate(scores[cal], tpr, classes[cal], per_class=True, num_classes=3)
        rejected = scores[held] < calibration.thresholds_for(classes[held])
        for c in range(3):
            per_class[c].append(float(rejected[classes[held] == c].mean()))
    for c, rates in per_class.items():
        assert np.mean(rates) <= 0.1 + 3 * np.std(rates) / np.sqrt(SPLITS), c


def test_p_values_uniform_on_id_and_small_on_far_ood(pool):
    _, scores, _, noise = pool
    cal, held = scores[:1000], scores[1000:]
    id_p = p_values(np.sort(cal), held)
    assert kstest(id_p, "uniform").pvalue > 0.01
    assert np.median(p_values(np.sort(cal), noise)) < 0.01
    # rejection at tpr is exactly p <= k / (n + 1)
    k = conformal_rank(1000, 0.95)
    assert np.array_equal(held < conformal_threshold(cal, 0.95), id_p <= k / 1001)


def test_shift_alarm_quiet_on_id_and_firing_on_mixtures(pool):
    _, scores, _, noise = pool
    cal, held = scores[:1000], scores[1000:]
    t = conformal_threshold(cal, 0.95)
    quiet = shift_test(int((held < t).sum()), len(held), 0.95, 1000)
    assert quiet["p_value"] > 0.01
    mixed = np.concatenate([held[:400], noise[:100]])  # 20% OOD
    loud = shift_test(int((mixed < t).sum()), len(mixed), 0.95, 1000)
    assert loud["p_value"] < 1e-6 and loud["binomial_p"] < 1e-6


def test_detector_file_carries_the_calibration(pool, trained_toy, tmp_path):
    model = trained_toy[0]
    detector = pool[0]
    detector.calibrate(make_images(400, seed=5), 0.9, per_class=True, num_classes=3)
    loaded = Detector.load(detector.save(tmp_path / "d.safetensors"), model, CPU)
    images = make_images(50, seed=6)
    a, b = detector.predict(images), loaded.predict(images)
    assert np.array_equal(a.is_ood, b.is_ood) and np.allclose(a.p_values, b.p_values)
    assert loaded.calibration.summary()["per_class"] and len(loaded.calibration.class_thresholds) == 3
    with pytest.raises(WatermarkOODError, match="predicted as class"):
        detector.calibrate(make_images(12, seed=5), 0.9, per_class=True, num_classes=3)


def test_exported_p_values_match_the_library(pool, tmp_path):
    import onnxruntime as ort

    from watermark_ood.detection.export import export_onnx, export_torchscript

    detector = pool[0]
    detector.calibrate(make_images(400, seed=5), 0.9)
    images = make_images(40, seed=7)
    library = detector.predict(images)
    x = images.images.float() / 255
    ts = torch.jit.load(str(export_torchscript(detector, tmp_path / "d.pt", with_p_value=True)))
    _, _, is_ood, p = ts(x)
    session = ort.InferenceSession(str(export_onnx(detector, tmp_path / "d.onnx", with_p_value=True)))
    onnx_p = session.run(None, {"images": x.numpy()})[3]
    n = detector.calibration.n
    assert np.abs(p.numpy() - library.p_values).max() <= 1 / (n + 1) + 1e-6  # a tie at float32 rounding at most
    assert np.abs(onnx_p - library.p_values).max() <= 1 / (n + 1) + 1e-6
    assert np.array_equal(is_ood.numpy(), library.is_ood)


def test_cli_per_class_shift_and_bad_input(tmp_path, capsys):
    common = CLI_TOY
    data, det = calibrated_toy_detector(tmp_path)
    assert "guaranteed" in capsys.readouterr().out
    noise = tmp_path / "noise.npz"
    np.savez(noise, x=np.random.default_rng(0).integers(0, 256, (60, 8, 8, 3), dtype=np.uint8))
    code = main(["predict", *common, "--detector", str(det), "--input", str(noise), "--out", str(tmp_path / "p.json"),
                 "--fail-on-shift", "0.01"])
    err = capsys.readouterr().err
    import json

    shift = json.loads((tmp_path / "p.json").read_text())["shift"]
    assert "shift alarm" in err and shift["inputs"] == 60
    assert code == (3 if shift["p_value"] < 0.01 else 0)
    for extra, message in ((["--tpr", "1"], "(0, 1)"), (["--tpr", "0.999"], "cannot support tpr 0.999"),
                           (["--per-class", "--tpr", "0.95"], "predicted as class")):
        out = tmp_path / "never.safetensors"
        assert main(["calibrate", *common, "--id-data", str(data), "--score", "energy", *extra, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1 and not out.exists()
    assert main(["predict", *common, "--detector", str(det), "--input", str(noise), "--out", str(tmp_path / "q.csv"),
                 "--fail-on-shift", "2"]) == 2


def test_detector_shift_test_reads_its_prediction(pool):
    detector = pool[0]
    detector.calibrate(make_images(400, seed=5), 0.9)
    quiet = detector.shift_test(detector.predict(make_images(200, seed=13)))
    loud = detector.shift_test(detector.predict(uniform_set(200, (3, 8, 8), 4)))
    assert quiet["inputs"] == loud["inputs"] == 200 and "beta_binomial_p" in quiet
    assert loud["p_value"] < 1e-6 < quiet["p_value"]


@pytest.mark.parametrize("rejected, inputs, n", [(0, 10, 19), (3, 10, 19), (7, 50, 99), (40, 200, 1000)])
def test_the_shift_alarm_is_the_exact_beta_binomial_tail(rejected, inputs, n):
    """P(R >= r) for R ~ BetaBinomial(m, k, n + 1 - k), computed here from its pmf
    C(m, r) B(r + k, m - r + n + 1 - k) / B(k, n + 1 - k), and the binomial tail beside it."""
    from math import comb, exp, lgamma

    def log_beta(a, b):
        return lgamma(a) + lgamma(b) - lgamma(a + b)

    k = conformal_rank(n, 0.95)
    a, b = k, n + 1 - k
    tail = sum(comb(inputs, r) * exp(log_beta(r + a, inputs - r + b) - log_beta(a, b))
               for r in range(rejected, inputs + 1))
    binomial = sum(comb(inputs, r) * 0.05 ** r * 0.95 ** (inputs - r) for r in range(rejected, inputs + 1))
    test = shift_test(rejected, inputs, 0.95, n)
    assert test["p_value"] == test["beta_binomial_p"] and abs(test["beta_binomial_p"] - tail) < 1e-9
    assert abs(test["binomial_p"] - binomial) < 1e-9 and test["expected_share_at_most"] == k / (n + 1)


def test_a_class_never_calibrated_rejects_its_inputs():
    """Per-class thresholds: an input predicted as a class with no calibration images (a model with more outputs
    than the ID data has classes) has no guarantee, so it is rejected, and its p-value is 0."""
    calibration = calibrate(np.array([0.1, 0.2, 0.3, 0.4] * 10), 0.9, np.array([0, 1] * 20), per_class=True)
    thresholds = calibration.thresholds_for(np.array([0, 1, 5]))
    assert np.isfinite(thresholds[:2]).all() and thresholds[2] == np.inf
    scores = np.array([0.35, 0.35, 1e9])
    assert (scores < thresholds).tolist() == [False, False, True]
    assert calibration.p_values(scores, np.array([0, 1, 5]))[2] == 0.0


def test_benjamini_hochberg_is_the_step_up_procedure():
    """By hand: sorted p = 0.01, 0.03, 0.04, 0.5 against k q / m = 0.025, 0.05, 0.075, 0.1: the largest k with
    p_(k) <= k q / m is 3, so the three smallest are rejected, though 0.03 and 0.04 exceed q / m."""
    from watermark_ood.detection.conformal import benjamini_hochberg

    assert benjamini_hochberg(np.array([0.04, 0.5, 0.01, 0.03]), 0.1).tolist() == [True, False, True, True]
    assert benjamini_hochberg(np.array([0.08, 0.5, 0.02, 0.06]), 0.1).tolist() == [False, False, True, False]
    assert benjamini_hochberg(np.array([np.nan, 0.001, 0.9]), 0.05).tolist() == [False, True, False]  # m = 2
    for level in (0.0, 1.0, -0.1):
        with pytest.raises(WatermarkOODError, match="false-discovery rate"):
            benjamini_hochberg(np.array([0.1]), level)


@pytest.mark.parametrize("ood_share", [0.01, 0.2])
def test_false_discovery_rate_over_batches_is_at_most_the_level(ood_share):
    """Seeded simulation: one calibration set of 300 ID scores per repetition, batches of 200 inputs with a share of
    OOD ones scored lower; the mean false-discovery proportion of Benjamini-Hochberg at q = 0.1 stays at most q
    (within three standard errors of its mean over 300 repetitions), where rejecting every p <= q does not
    (with 1% OOD, most of its rejections are ID inputs)."""
    from watermark_ood.detection.conformal import benjamini_hochberg

    rng, q, repetitions = np.random.default_rng(7), 0.1, 300
    fdp, naive = [], []
    for _ in range(repetitions):
        calibration = np.sort(rng.normal(size=300))
        n_ood = int(200 * ood_share)
        scores = np.concatenate([rng.normal(size=200 - n_ood), rng.normal(-3.0, 1.0, size=n_ood)])
        is_id = np.arange(200) < 200 - n_ood
        p = p_values(calibration, scores)
        for out, rejected in ((fdp, benjamini_hochberg(p, q)), (naive, p <= q)):
            out.append((rejected & is_id).sum() / max(rejected.sum(), 1))
    fdp, naive = np.array(fdp), np.array(naive)
    assert fdp.mean() <= q + 3 * fdp.std() / np.sqrt(repetitions)
    if ood_share == 0.01:
        assert naive.mean() > 3 * q


def test_predict_with_a_false_discovery_rate(pool, trained_toy, tmp_path, capsys):
    """Detector.predict(fdr=q) and `predict --fdr q` reject what Benjamini-Hochberg rejects over the batch's
    p-values; per-class files and levels outside (0, 1) are refused in one line, with nothing written."""
    import csv
    import json

    from watermark_ood.detection.conformal import benjamini_hochberg

    detector, scores, classes, noise = pool
    detector.calibrate(make_images(200, seed=31), 0.95)
    batch = torch.cat([make_images(40, seed=32).images, uniform_set(10, (3, 8, 8), 5).images])
    prediction = detector.predict(batch, fdr=0.1)
    assert np.array_equal(prediction.fdr_rejected, benjamini_hochberg(prediction.p_values, 0.1))
    assert prediction.fdr_rejected.any() and detector.predict(batch).fdr_rejected is None
    rows = prediction.to_rows()
    assert [r["fdr_reject"] for r in rows] == prediction.fdr_rejected.tolist()
    model, norm, train = trained_toy
    per_class = Detector(model, norm, score="energy", execution=CPU).fit(train).calibrate(
        make_images(600, seed=33), 0.9, per_class=True)
    with pytest.raises(WatermarkOODError, match="--per-class"):
        per_class.predict(batch, fdr=0.1)

    common = CLI_TOY
    data, det = calibrated_toy_detector(tmp_path)
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, x=np.concatenate([np.load(data / "test.npz")["x"], np.random.default_rng(1).integers(
        0, 256, (20, 8, 8, 3), dtype=np.uint8)]))
    for name in ("p.csv", "p.json"):
        assert main(["predict", *common, "--detector", str(det), "--input", str(inputs), "--out",
                     str(tmp_path / name), "--fdr", "0.2"]) == 0
        assert "false-discovery rate 0.2" in capsys.readouterr().out
    with (tmp_path / "p.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0])[-2:] == ["p_value", "fdr_reject"] and len(table) == 50
    expected = benjamini_hochberg(np.array([float(r["p_value"]) for r in table]), 0.2)
    assert [r["fdr_reject"] == "True" for r in table] == expected.tolist()
    written = json.loads((tmp_path / "p.json").read_text())
    assert written["fdr"]["rejected"] == int(expected.sum()) and written["fdr"]["tested"] == 50
    assert [r["fdr_reject"] for r in written["rows"]] == expected.tolist()
    for level in ("0", "1.5"):
        out = tmp_path / f"never-{level}.csv"
        assert main(["predict", *common, "--detector", str(det), "--input", str(inputs), "--out", str(out),
                     "--fdr", level]) == 2
        err = capsys.readouterr().err.strip()
        assert "--fdr is a false-discovery rate in (0, 1)" in err and len(err.splitlines()) == 1 and not out.exists()


# ---------------------------------------------------------------- guarantees pinned at their exact values
def test_the_recorded_bound_is_k_over_n_plus_one():
    """19 calibration scores at tpr 0.95: rank 1, bound 1/20 (k/n would say 1/19); per class the same per class."""
    overall = calibrate(np.arange(19.0), 0.95).summary()
    assert overall["rank"] == 1 and overall["guaranteed_false_rejection_at_most"] == 1 / 20
    per_class = calibrate(np.arange(60.0), 0.9, np.repeat([0, 1, 2], 20), per_class=True).summary()
    assert {c: v["guaranteed_false_rejection_at_most"] for c, v in per_class["classes"].items()} == {
        "0": 2 / 21, "1": 2 / 21, "2": 2 / 21}


def test_p_values_count_ties_as_conforming():
    """p = (1 + #{calibration <= s}) / (n + 1): a score equal to calibration scores counts them (with < it would
    not), so an input tied with the lowest calibration score is not more suspicious than that score."""
    cal = np.array([1.0, 2.0, 2.0, 2.0, 3.0])
    assert p_values(cal, np.array([2.0, 1.0, 0.5, 3.0])).tolist() == [5 / 6, 2 / 6, 1 / 6, 1.0]


def test_a_hand_edited_threshold_is_refused(pool, tmp_path):
    import json as json_module

    from safetensors.torch import load_file, save_file

    detector = pool[0]
    detector.calibrate(make_images(400, seed=5), 0.9)
    path = detector.save(tmp_path / "d.safetensors")
    with open(path, "rb") as handle:
        data = handle.read()
    header = json_module.loads(data[8:8 + int.from_bytes(data[:8], "little")])["__metadata__"]
    meta = json_module.loads(header["detector"])
    meta["threshold"] = meta["threshold"] * 1.001 + 1e-3  # a little more permissive than its conformal rank
    save_file(load_file(str(path)), str(tmp_path / "edited.safetensors"), metadata={"detector": json_module.dumps(meta)})
    with pytest.raises(WatermarkOODError, match="threshold: expected .* the split-conformal threshold"):
        Detector.load(tmp_path / "edited.safetensors", detector.model, CPU)


def test_exported_p_values_and_per_class_thresholds_are_the_library_formula(pool, trained_toy, tmp_path):
    """The exported p-value is (1 + #{calibration <= s}) / (n + 1) of the module's own score, to float precision
    (not within 1/(n + 1)), and a per-class file exports each class's own threshold and p-values."""
    from watermark_ood.detection.export import export_torchscript

    model, norm, train = trained_toy
    images = make_images(60, seed=8)
    x = images.images.float() / 255
    for per_class in (False, True):
        detector = Detector(model, norm, score="energy", execution=CPU).fit(train).calibrate(
            make_images(600, seed=33), 0.9, per_class=per_class, num_classes=3 if per_class else None)
        module = torch.jit.load(str(export_torchscript(detector, tmp_path / f"d{per_class}.pt", with_p_value=True)))
        logits, score, is_ood, p = module(x)
        predicted = logits.argmax(1).numpy()
        cal = detector.calibration
        own = np.float32(cal.scores).astype(np.float64)  # the module holds them as float32, like its scores
        expected = np.array([p_values(own if not per_class else own[cal.classes == c], [s])[0]
                             for s, c in zip(score.numpy().astype(np.float64), predicted)])
        assert np.allclose(p.numpy(), expected, rtol=1e-6, atol=0)
        thresholds = module.class_thresholds.numpy()
        if per_class:
            assert {c: float(thresholds[c]) for c in cal.class_thresholds} == pytest.approx(cal.class_thresholds)
            assert len(set(cal.class_thresholds.values())) > 1  # the classes' thresholds differ here
        else:
            assert np.all(thresholds == np.float32(detector.threshold))
        assert np.array_equal(is_ood.numpy(), score.numpy() < thresholds[predicted])


def test_fail_on_shift_exits_3_exactly_below_the_level(tmp_path, capsys):
    """The alarm's p-value p fails the run at any level above p and passes it at any level below."""
    import json as json_module

    common = CLI_TOY
    data, det = calibrated_toy_detector(tmp_path)
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, x=np.concatenate([np.load(data / "test.npz")["x"][:20], np.random.default_rng(2).integers(
        0, 256, (10, 8, 8, 3), dtype=np.uint8)]))
    assert main(["predict", *common, "--detector", str(det), "--input", str(inputs), "--out",
                 str(tmp_path / "p.json")]) == 0
    p = json_module.loads((tmp_path / "p.json").read_text())["shift"]["p_value"]
    assert 0 < p < 1
    for level, code in ((min(0.999, p * 1.01), 3), (p * 0.99, 0)):
        assert main(["predict", *common, "--detector", str(det), "--input", str(inputs), "--out",
                     str(tmp_path / "q.json"), "--fail-on-shift", repr(level)]) == code
    capsys.readouterr()
