import json

import numpy as np
import pytest
import torch
from conftest import make_images, write_npz_dataset

from watermark_ood.cli import main
from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.data.synthetic import OUTLIER_KINDS, synthesized_kinds
from watermark_ood.detection.detector import Detector, WatermarkDetector
from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.selection.auto_score import SelectionSettings
from watermark_ood.watermark.config import FitConfig
from watermark_ood.watermark.file import Watermark

CPU = ExecutionConfig(device="cpu")


@pytest.fixture
def detector(toy_model, toy_train, norm3):
    cfg = FitConfig(objective="energy", sigma=0.5, rho=0.1, beta=0.1, t_in=0.2, t_out=0.2, epochs=1, batch_size=16)
    return WatermarkDetector(toy_model, norm3, score="energy", config=cfg, execution=CPU).fit(toy_train, progress=False)


def test_calibrated_detector_accepts_the_requested_share_of_held_out_id(detector):
    calibration, held_out = make_images(2000, seed=5), make_images(2000, seed=6)
    detector.calibrate(calibration, tpr=0.95)
    accepted = 1 - detector.predict(held_out).is_ood.mean()
    assert abs(accepted - 0.95) <= 0.01
    assert (1 - detector.predict(calibration).is_ood.mean()) >= 0.95


def test_save_load_round_trips_exactly(detector, toy_model, tmp_path):
    detector.calibrate(make_images(200, seed=5))
    path = detector.save(tmp_path / "det.safetensors")
    loaded = WatermarkDetector.load(path, toy_model, CPU)
    assert loaded.threshold == detector.threshold and loaded.score == "energy" and loaded.tpr == 0.95
    assert torch.equal(loaded.watermark.tensor, detector.watermark.tensor)
    assert loaded.normalization == detector.normalization
    x = make_images(50, seed=9)
    assert np.array_equal(loaded.predict(x).scores, detector.predict(x).scores)
    assert json.loads((tmp_path / "det.json").read_text())["threshold"] == detector.threshold


@pytest.mark.parametrize("damage", [b"garbage", "truncate", "wrong-format"])
def test_malformed_detector_files(detector, tmp_path, damage):
    detector.calibrate(make_images(100, seed=5))
    path = detector.save(tmp_path / "det.safetensors")
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-7])
    elif damage == "wrong-format":
        Watermark(torch.zeros(1, 3, 8, 8)).save(path)
    else:
        path.write_bytes(damage)
    with pytest.raises(WatermarkOODError, match="det.safetensors"):
        WatermarkDetector.read(path)


def test_uncalibrated_unfitted_or_unknown_detectors_are_refused(toy_model, norm3):
    with pytest.raises(WatermarkOODError, match="calibrate"):
        WatermarkDetector(toy_model, norm3, score="msp", execution=CPU).predict(make_images(3))
    with pytest.raises(WatermarkOODError, match="not fitted"):
        Detector(toy_model, norm3, score="knn", execution=CPU).scores(make_images(3))
    with pytest.raises(WatermarkOODError, match="known scores: msp, energy"):
        Detector(toy_model, norm3, score="knnn")
    with pytest.raises(WatermarkOODError, match="not fitted"):
        Detector(toy_model, norm3, score="vim", execution=CPU).save("never-written.safetensors")


def test_exported_torchscript_and_onnx_agree_with_the_library(detector, tmp_path):
    """The exported module takes raw [0, 1] images: normalization, watermark, model, score and threshold inside."""
    import onnxruntime as ort

    from watermark_ood.detection.export import export_onnx, export_torchscript

    detector.calibrate(make_images(200, seed=5))
    ts = torch.jit.load(str(export_torchscript(detector, tmp_path / "d.pt")))
    session = ort.InferenceSession(str(export_onnx(detector, tmp_path / "d.onnx")))
    for inputs in (make_images(37, seed=11), None):
        if inputs is None:  # random images, not only real-looking ones
            x = torch.rand(19, 3, 8, 8)
            with torch.no_grad():
                mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (detector.normalization.mean, detector.normalization.std))
                logits = detector.model((x - mean) / std + detector.watermark.tensor)
            lib_scores = torch.logsumexp(logits, 1).numpy()
        else:
            x = inputs.images.float() / 255
            lib_scores = detector.scores(inputs)
            with torch.no_grad():
                logits = detector.model(detector.normalization(inputs.images) + detector.watermark.tensor)
        with torch.no_grad():
            ts_logits, ts_scores, ts_ood = ts(x)
        onnx_logits, onnx_scores, onnx_ood = session.run(None, {"images": x.numpy()})
        assert np.allclose(ts_logits.numpy(), logits.numpy(), atol=1e-4)  # the logits, not only the scores
        assert np.allclose(onnx_logits, logits.numpy(), atol=1e-4)
        assert np.allclose(ts_scores.numpy(), lib_scores, atol=1e-4)
        assert np.allclose(onnx_scores, lib_scores, atol=1e-4)
        agree = lib_scores < detector.threshold
        margin = np.abs(lib_scores - detector.threshold) > 1e-4
        assert np.array_equal(ts_ood.numpy()[margin], agree[margin])
        assert np.array_equal(onnx_ood[margin], agree[margin])


def test_cli_calibrate_predict_export(tmp_path, capsys):
    data = write_npz_dataset(tmp_path / "toy", n_train=200, n_test=30)
    fit_out = tmp_path / "fit"
    common = ["--model", "small_cnn", "--random-weights", "--device", "cpu", "--no-progress"]
    assert main(["fit", *common, "--id-data", str(data), "--epochs", "1", "--batch-size", "16", "--objective",
                 "energy", "--out", str(fit_out)]) == 0
    det = tmp_path / "det.safetensors"
    assert main(["calibrate", *common, "--watermark", str(fit_out / "watermark.safetensors"), "--id-data", str(data),
                 "--out", str(det)]) == 0
    assert "accepts" in capsys.readouterr().out
    np.savez(tmp_path / "inputs.npz", x=make_images(12, seed=3).images.permute(0, 2, 3, 1).numpy())
    for suffix in ("csv", "json"):
        out = tmp_path / f"pred.{suffix}"
        assert main(["predict", *common, "--detector", str(det), "--input", str(tmp_path / "inputs.npz"),
                     "--out", str(out)]) == 0
    assert (tmp_path / "pred.csv").read_text().splitlines()[0] == "input,score,is_ood,status,predicted_class,p_value"
    assert len(json.loads((tmp_path / "pred.json").read_text())["rows"]) == 12
    assert main(["export", *common, "--detector", str(det), "--out", str(tmp_path / "exp")]) == 0
    assert (tmp_path / "exp" / "detector.onnx").is_file() and (tmp_path / "exp" / "detector.torchscript.pt").is_file()
    (tmp_path / "bad.safetensors").write_bytes(b"nope")
    assert main(["predict", *common, "--detector", str(tmp_path / "bad.safetensors"), "--input",
                 str(tmp_path / "inputs.npz"), "--out", str(tmp_path / "x.csv")]) == 2


def test_cli_plain_feature_detector_calibrate_export_evaluate(tmp_path, capsys):
    """The detector that works best on our models (a feature score, no watermark) can be shipped and evaluated."""
    data = write_npz_dataset(tmp_path / "toy", n_train=300, n_test=30)
    common = ["--model", "small_cnn", "--random-weights", "--device", "cpu", "--no-progress"]
    det = tmp_path / "knn.safetensors"
    assert main(["calibrate", *common, "--score", "knn", "--id-data", str(data), "--out", str(det)]) == 0
    assert json.loads(det.with_suffix(".json").read_text())["score"] == "knn"
    assert main(["export", *common, "--detector", str(det), "--out", str(tmp_path / "exp")]) == 0
    assert (tmp_path / "exp" / "detector.onnx").is_file()
    np.savez(tmp_path / "inputs.npz", x=make_images(12, seed=3).images.permute(0, 2, 3, 1).numpy())
    assert main(["predict", *common, "--detector", str(det), "--input", str(tmp_path / "inputs.npz"),
                 "--out", str(tmp_path / "p.json")]) == 0
    assert json.loads((tmp_path / "p.json").read_text())["score"] == "knn"
    out = tmp_path / "ev"
    assert main(["evaluate", *common, "--detector", str(det), "--id-data", str(data), "--ood-data",
                 "synthetic:uniform", "--out", str(out)]) == 0
    run = json.loads((out / "results.json").read_text())["runs"][0]
    assert run["score"] == "knn" and run["has_watermark"] is False and run["baseline"] == run["watermarked"]
    # calibrated at 0.95 on training hold-out: on the test split it accepts about that share; the binomial standard
    # deviation of a share of 30 test images is 4 points, so 0.1 is 2.5 of them (the draw is seeded: no flakiness)
    assert abs(run["decisions"]["id_accepted"] - 0.95) <= 0.1 and run["decisions"]["tpr_requested"] == 0.95
    capsys.readouterr()
    assert main(["calibrate", *common, "--score", "odin", "--id-data", str(data), "--out", str(tmp_path / "o.st")]) == 0
    assert main(["export", *common, "--detector", str(tmp_path / "o.st"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "odin cannot be exported" in err and len(err.splitlines()) == 1


def test_cli_score_auto_ranks_without_reading_ood_data(tmp_path, monkeypatch, capsys):
    """No file outside the ID data folder is opened (every array and image reader is trapped at its source), and
    the ID test split does not change the choice: a second run with other test images writes the same file."""
    import PIL.Image

    data = write_npz_dataset(tmp_path / "toy", n_train=400, n_test=30)
    real_load = np.load

    def only_id_data(path, *args, **kwargs):
        if not str(path).startswith(str(data)):
            raise AssertionError(f"calibrate --score auto read {path}")
        return real_load(path, *args, **kwargs)

    def no_images(*args, **kwargs):
        raise AssertionError("calibrate --score auto opened an image file")

    monkeypatch.setattr(np, "load", only_id_data)
    monkeypatch.setattr(PIL.Image, "open", no_images)
    np.savez(tmp_path / "decoy.npz", x=np.zeros((4, 8, 8, 3), np.uint8))  # an OOD set lying next to the data
    Watermark(torch.randn(1, 3, 8, 8) * 0.05, {"objective": "energy"}).save(tmp_path / "w.safetensors")
    det = tmp_path / "auto.safetensors"
    assert main(["calibrate", "--model", "small_cnn", "--random-weights", "--device", "cpu", "--no-progress", "--score", "auto",
                 "--watermark", str(tmp_path / "w.safetensors"), "--id-data", str(data), "--out", str(det)]) == 0
    meta = json.loads(det.with_suffix(".json").read_text())
    ranking = meta["selection"]["ranking"]
    assert {r["watermark"] for r in ranking} == {"none", "given"}
    assert any("+" in r["score"] for r in ranking)  # combinations compete too
    assert meta["score"] == meta["selection"]["chosen"]["score"]
    ok = [r for r in ranking if r["ok"]]
    assert ok == sorted(ok, key=lambda r: (not r.get("admitted", True), r["ranking_fpr95"], -r["ranking_auroc"]))
    made = set(synthesized_kinds(SelectionSettings().ranking_kinds))  # every kind made, ranked or not
    assert made >= set(OUTLIER_KINDS) and all(set(r["per_kind"]) == made for r in ok if not r.get("raced_out"))
    assert all(r["refused"].startswith("raced out") and not r["admitted"] for r in ok if r.get("raced_out"))
    admitted = [r for r in ok if r.get("admitted", True)]
    assert "chance_better_than_chosen" not in admitted[0] and all(0 <= r["chance_better_than_chosen"] <= 1
                                                                  for r in admitted[1:])
    assert not any("_scores" in r for r in ranking)  # scores are used, never written
    assert meta["selection"]["close"] == [f"{r['score']} ({r['watermark']})" for r in admitted[1:]
                                          if r["chance_better_than_chosen"] >= meta["selection"]["close_share"]]
    printed = capsys.readouterr().out
    assert f"from {len(ok)} ranked candidates" in printed and "resamples" in det.with_suffix(".md").read_text()
    skipped = sorted({r["score"] for r in ranking if not r["ok"]})  # the console names what was not ranked
    assert skipped and f"({len(skipped)} skipped: {', '.join(skipped)}; why in the ranking)" in printed
    other = write_npz_dataset(tmp_path / "toy-other-test", n_train=400, n_test=30)
    np.savez_compressed(other / "test.npz", **{k: v[::-1].copy() if k == "x" else v
                                                for k, v in real_load(write_npz_dataset(
                                                    tmp_path / "scratch", n_train=4, n_test=30, seed=9)
                                                    / "test.npz").items()})
    data = other  # the trap now admits this folder
    det2 = tmp_path / "auto2.safetensors"
    assert main(["calibrate", "--model", "small_cnn", "--random-weights", "--device", "cpu", "--no-progress", "--score", "auto",
                 "--watermark", str(tmp_path / "w.safetensors"), "--id-data", str(other), "--out", str(det2)]) == 0
    first, second = json.loads(det.with_suffix(".json").read_text()), json.loads(det2.with_suffix(".json").read_text())
    assert first["threshold"] == second["threshold"] and first["score"] == second["score"]
    loaded = Detector.load(det, __import__("watermark_ood.models", fromlist=["load_model"]).load_model(
        "small_cnn", None, None, 3).module, CPU)
    assert loaded.threshold == meta["threshold"]


def test_selection_refuses_a_watermark_that_costs_accuracy(trained_toy):
    """A watermark that wrecks the classifier is never shipped, however it ranks on synthetic outliers."""
    import doctest

    from watermark_ood.selection import auto_score as module
    from watermark_ood.selection.auto_score import SelectionSettings, select_detector

    assert doctest.testmod(module).failed == 0
    model, norm, train = trained_toy
    harmful = Watermark(torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 50.0)
    settings = SelectionSettings(candidates=("energy", "msp", "knn"), combine=(), fit_images=200, rank_images=40,
                                 calibration_images=20, holdout_fraction=0.2)  # 30 calibration images: >= 19
    selection = select_detector(model, norm, train, harmful, settings=settings, execution=CPU)
    given = [r for r in selection.ranking if r["watermark"] == "given" and r["ok"]]
    assert given and all(r["admitted"] is False and "accuracy" in r["refused"] for r in given)
    assert selection.ranking[0]["watermark"] == "none" and selection.detector.watermark is None
    assert selection.ranking.index(given[0]) > max(selection.ranking.index(r) for r in selection.ranking
                                                   if r["watermark"] == "none" and r["ok"])


def test_selection_ranks_on_the_chosen_outlier_kinds_only(trained_toy, tmp_path, capsys):
    """The ranking's criterion is FPR95 over ``ranking_kinds``; every kind is still reported and guards watermarks.
    Called from Python it says what it ranks on stderr (it takes minutes on real models), and the detector it
    ships saves the same three files as the CLI (safetensors, its JSON, the ranking as .md)."""
    from watermark_ood.selection.auto_score import SelectionSettings, select_detector

    model, norm, train = trained_toy
    settings = SelectionSettings(candidates=("energy", "msp", "knn", "maxlogit"), combine=(2,), fit_images=200,
                                 rank_images=50, calibration_images=20, ranking_kinds=("flat-colour",),
                                 holdout_fraction=0.2)
    selection = select_detector(model, norm, train, settings=settings, execution=CPU)
    said = capsys.readouterr().err.splitlines()
    assert len(said) >= len(selection.ranking) and any(line.startswith("knn") or " knn" in line for line in said)
    path = selection.detector.save(tmp_path / "chosen.safetensors")
    report = path.with_suffix(".md").read_text()
    assert report.startswith(f"# Detector chosen: {selection.detector.score}") and path.with_suffix(".json").is_file()
    ok = [r for r in selection.ranking if r["ok"]]
    assert all(r["ranking_fpr95"] == r["per_kind"]["flat-colour"] and set(r["per_kind"]) == set(OUTLIER_KINDS)
               for r in ok)
    assert [r["ranking_fpr95"] for r in ok] == sorted(r["ranking_fpr95"] for r in ok)
    summary = selection.detector.selection
    assert summary["ranking_kinds"] == ["flat-colour"] and "flat-colour)" in summary["criterion"]
    assert 0 < summary["forward_seconds"] < summary["seconds"]  # the forward passes' share of choosing
    with pytest.raises(WatermarkOODError, match="outlier kinds must be some of patch-shuffle"):
        select_detector(model, norm, train, settings=SelectionSettings(ranking_kinds=("sepia",)), execution=CPU)


def test_selection_ranks_detectors_with_their_own_passes_and_ships_the_winner(trained_toy):
    """Layer and map detectors rank beside the shared-output ones (never inside combinations); whichever wins is
    fitted and calibrated on its own passes: its shipped scores are those of the detector fitted alone."""
    from watermark_ood.selection.auto_score import SelectionSettings, select_detector, selection_splits

    model, norm, train = trained_toy
    own = ("multimahalanobis", "rankfeat", "ash-map")
    for candidates in (("energy", *own), own):  # the second pool: the winner is one of them
        settings = SelectionSettings(candidates=candidates, combine=(2,), fit_images=200, rank_images=50,
                                     calibration_images=20, holdout_fraction=0.2)
        selection = select_detector(model, norm, train, settings=settings, execution=CPU)
        rows = {r["score"]: r for r in selection.ranking}
        assert all(rows[n]["ok"] for n in own) and rows["multimahalanobis"]["shared_taps"]  # one pass for layers
        assert all(rows[n]["own_passes"] for n in own[1:])
        assert not any("+" in name and set(name.split("+")) & set(own) for name in rows)
    chosen = selection.detector
    assert chosen.score in own and chosen.threshold is not None
    fit_set = selection_splits(train, settings)[0]
    alone = Detector(model, norm, None, chosen.score, execution=CPU).fit(fit_set, limit=len(fit_set))
    test = make_images(30, seed=8)
    assert np.allclose(chosen.scores(test), alone.scores(test), rtol=1e-6)


def test_selection_with_class_kinds_ranks_on_them_and_reports_every_kind_made(trained_toy):
    """The pre-registered class kinds (issue 27): made only when the ranking asks for them; combinations' per-kind
    figures use the same seven kinds as single detectors'."""
    from watermark_ood.data.synthetic import CLASS_KINDS
    from watermark_ood.selection.auto_score import SelectionSettings, select_detector

    model, norm, train = trained_toy
    settings = SelectionSettings(candidates=("energy", "msp", "knn"), combine=(2,), fit_images=200, rank_images=70,
                                 calibration_images=20, ranking_kinds=CLASS_KINDS, holdout_fraction=0.3)
    selection = select_detector(model, norm, train, settings=settings, execution=CPU)
    ok = [r for r in selection.ranking if r["ok"]]
    assert any("+" in r["score"] for r in ok)
    assert all(set(r["per_kind"]) == set(OUTLIER_KINDS + CLASS_KINDS) for r in ok)
    # one ID threshold: FPR95 over the class kinds' rows is a share-weighted mean of their own two FPR95s
    assert all(min(r["per_kind"][k] for k in CLASS_KINDS) - 1e-12 <= r["ranking_fpr95"]
               <= max(r["per_kind"][k] for k in CLASS_KINDS) + 1e-12 for r in ok)


def test_exported_knn_is_batch_independent_detached_and_quiet(trained_toy, tmp_path):
    """KNN is the export whose trace reads a shape (a constant of the file): batch sizes 1, 3, 17 and 400 give the
    library's scores and logits; outputs need no .detach(); export prints no warnings."""
    import warnings

    import onnxruntime as ort

    from watermark_ood.detection.export import export_onnx, export_torchscript

    model, norm, train = trained_toy
    detector = Detector(model, norm, score="knn", execution=CPU).fit(train).calibrate(make_images(100, seed=4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = export_torchscript(detector, tmp_path / "k.pt")
    ts = torch.jit.load(str(path))
    session = ort.InferenceSession(str(export_onnx(detector, tmp_path / "k.onnx")))
    images = make_images(400, seed=9)
    x = images.images.float() / 255
    lib_scores = detector.scores(images)
    with torch.no_grad():
        lib_logits = model(norm(images.images))
    for n in (1, 3, 17, 400):
        logits, scores, is_ood = ts(x[:n])
        assert not logits.requires_grad and not scores.requires_grad
        assert np.allclose(scores.numpy(), lib_scores[:n], atol=1e-4)
        assert np.allclose(logits.numpy(), lib_logits[:n].numpy(), atol=1e-4)
        onnx_logits, onnx_scores, _ = session.run(None, {"images": x[:n].numpy()})
        assert np.allclose(onnx_scores, lib_scores[:n], atol=1e-4)
        assert np.allclose(onnx_logits, lib_logits[:n].numpy(), atol=1e-4)
        assert np.array_equal(is_ood.numpy(), scores.numpy() < detector.threshold)


def test_predict_takes_uint8_or_float_images_alike(trained_toy):
    model, norm, train = trained_toy
    detector = Detector(model, norm, score="energy", execution=CPU).calibrate(make_images(100, seed=4))
    images = make_images(20, seed=8).images
    as_uint8, as_float = detector.predict(images), detector.predict(images.float() / 255)
    assert np.array_equal(as_uint8.scores, as_float.scores) and np.array_equal(as_uint8.classes, as_float.classes)
    assert np.array_equal(as_uint8.classes, model(norm(images)).argmax(1).numpy())
    with pytest.raises(WatermarkOODError, match=r"\[0, 1\]"):
        detector.predict(images.float())  # 0-255 floats: a mistake, said in one line
    with pytest.raises(WatermarkOODError, match="NCHW"):
        detector.predict(images[0])
