"""``evaluate`` as a library call and a command: leaderboards without a watermark, the shipped row, bad input."""

import json

import numpy as np
import pytest
from conftest import write_npz_dataset

from watermark_ood.cli import main
from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.evaluation.metrics import fpr_at_tpr, mean_fpr_standard_error
from watermark_ood.pipelines.evaluate import EvaluateSettings, check_evaluate

RUN = ["--model", "small_cnn", "--random-weights", "--device", "cpu", "--no-progress"]


@pytest.fixture
def data(tmp_path):
    root = write_npz_dataset(tmp_path / "toy", n_train=250, n_test=30)  # a 25-image hold-out calibrates at 0.95
    np.savez(tmp_path / "noise.npz", x=np.random.default_rng(0).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8))
    return root, tmp_path / "noise.npz"


def test_leaderboard_without_a_watermark(data, tmp_path, capsys):
    """A leaderboard says one line per detector as it goes (stderr is not a terminal here), its summary and
    report.md are a leaderboard (no `baseline -> watermarked` layout without a watermark), and it says where
    every file went."""
    id_data, noise = data
    out = tmp_path / "lb"
    progress = [x for x in RUN if x != "--no-progress"]
    assert main(["evaluate", *progress, "--id-data", str(id_data), "--ood-data", str(noise), "synthetic:uniform",
                 "--scores", "energy", "knn", "knn+energy", "--out", str(out)]) == 0
    printed, said = capsys.readouterr()
    lines = [line for line in said.splitlines() if line.startswith("[")]
    assert [line.split(" (")[0] for line in lines] == ["[1/3] energy", "[2/3] knn", "[3/3] knn+energy"]
    assert all("(baseline): mean FPR95 " in line for line in lines)
    assert f"wrote {out / 'results.json'}, {out / 'report.md'}, {out / 'leaderboard.md'}" in printed
    assert "3 detectors without a watermark, best mean FPR95 first" in printed
    assert "objective=None" not in printed and "->" not in printed and "fit 0.0s" not in printed
    report = (out / "report.md").read_text()
    assert "->" not in report and "Hyperparameters" not in report and "objective" not in report
    assert "## Leaderboard" in report and "ID test accuracy" in report and report.count("| none |") == 3
    run = json.loads((out / "results.json").read_text())["runs"][0]
    assert run["has_watermark"] is False and run["watermarked"] == {} and run["score"] == "energy"
    assert set(run["scores"]) == {"energy", "knn", "knn+energy"}
    assert all("watermarked" not in block for block in run["scores"].values())  # nothing was fitted first
    assert run["baseline"] == run["scores"]["energy"]["baseline"]
    board = (out / "leaderboard.md").read_text()
    rows = [line for line in board.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 3 and all("| none |" in r for r in rows)
    assert "30 ID test images" in board and "6 noise" in board and "6 uniform" in board  # |ID test| / 5 each
    assert (out / "leaderboard.png").stat().st_size > 1000 and not (out / "watermark.safetensors").exists()
    # The ± printed is the binomial SE of the row's mean FPR95 at those sizes.
    energy = run["scores"]["energy"]["baseline"]
    se = mean_fpr_standard_error([energy["noise"]["fpr95"], energy["uniform"]["fpr95"]], [6, 6])
    assert f"{100 * energy['mean']['fpr95']:.2f} ± {100 * se:.2f}" in board


def test_score_accepts_every_detector(data, tmp_path):
    id_data, noise = data
    out = tmp_path / "one"
    assert main(["evaluate", *RUN, "--id-data", str(id_data), "--ood-data", str(noise), "--score", "knn",
                 "--out", str(out)]) == 0
    run = json.loads((out / "results.json").read_text())["runs"][0]
    assert run["score"] == "knn" and run["baseline"] == run["scores"]["knn"]["baseline"]


def test_shipped_detector_gets_its_marked_row(data, tmp_path):
    id_data, noise = data
    detector = tmp_path / "det.safetensors"
    assert main(["calibrate", *RUN, "--id-data", str(id_data), "--score", "knn", "--out", str(detector)]) == 0
    out = tmp_path / "ev"
    assert main(["evaluate", *RUN, "--detector", str(detector), "--id-data", str(id_data), "--ood-data", str(noise),
                 "--scores", "energy", "knn", "--out", str(out)]) == 0
    run = json.loads((out / "results.json").read_text())["runs"][0]
    row = run["shipped_row"]
    assert row["shipped"] and row["detector"] == "knn" and row["mean"] == run["watermarked"]["mean"]
    assert row["file_bytes"] == detector.stat().st_size
    board = (out / "leaderboard.md").read_text()
    assert board.count("(shipped file)") == 1 and board.count("| knn |") == 1  # the refitted knn, unmarked


def test_bad_input_is_one_line_and_writes_nothing(data, tmp_path, capsys):
    id_data, noise = data
    out = tmp_path / "never"
    assert main(["evaluate", *RUN, "--id-data", str(id_data), "--ood-data", str(noise), "--scores", "knn", "kmeans",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown score 'kmeans'" in err and "known scores: msp" in err and len(err.splitlines()) == 1
    assert not out.exists()
    assert main(["evaluate", *RUN, "--id-data", str(id_data), "--ood-data", str(noise), "--out", str(out)]) == 2
    assert "--scores" in capsys.readouterr().err and not out.exists()


def test_detector_for_another_model_is_refused(data, tmp_path, capsys):
    id_data, noise = data
    detector = tmp_path / "det.safetensors"
    assert main(["calibrate", *RUN, "--id-data", str(id_data), "--score", "energy", "--out", str(detector)]) == 0
    capsys.readouterr()
    out = tmp_path / "never"
    code = main(["evaluate", "--model", "resnet8", "--random-weights", "--device", "cpu", "--no-progress", "--detector", str(detector),
                 "--id-data", str(id_data), "--ood-data", str(noise), "--scores", "energy", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "made for model" in err and len(err.splitlines()) == 1 and not out.exists()


def test_check_evaluate_runs_before_any_data():
    with pytest.raises(WatermarkOODError, match="at most one of"):
        check_evaluate(EvaluateSettings("missing", ["x"], "o", watermark="a", detector="b"))
    with pytest.raises(WatermarkOODError, match="unknown score 'nope'"):
        check_evaluate(EvaluateSettings("missing", ["x"], "o", score="nope"))
    assert check_evaluate(EvaluateSettings("missing", ["x"], "o", scores=["msp", "msp", "energy"])) == ["msp", "energy"]


def test_standard_error_matches_a_simulation():
    rng = np.random.default_rng(0)
    id_scores = rng.normal(1, 1, 4000)
    estimates = [fpr_at_tpr(id_scores, rng.normal(0, 1, 200)) for _ in range(400)]
    p = float(np.mean(estimates))
    assert abs(np.std(estimates) - mean_fpr_standard_error([p], [200])) < 0.2 * mean_fpr_standard_error([p], [200])


def test_predict_says_what_it_adapted_in_a_folder_of_grey_or_larger_images(data, tmp_path, capsys):
    """Greyscale 64x64 PNGs given to an RGB 8x8 detector are converted and resized: one line with the counts on
    stderr and an ``adapted`` block in the JSON, so changed scores are never silent; files that need nothing are
    not counted."""
    from PIL import Image

    id_data, _ = data
    det = tmp_path / "d.safetensors"
    assert main(["calibrate", *RUN, "--id-data", str(id_data), "--score", "energy", "--out", str(det)]) == 0
    folder = tmp_path / "inputs"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8), "L").save(folder / f"grey{i}.png")
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "big.png")
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / "fits.png")
    capsys.readouterr()
    assert main(["predict", *RUN, "--detector", str(det), "--input", str(folder), "--out", str(tmp_path / "p.json")]) == 0
    err = capsys.readouterr().err
    assert ("adapted 4 of 5 input files to the detector's 3x8x8 (shorter side resized, then center crop): "
            "3 converted from L to RGB; resized from 64x64; 1 resized from 64x64\n") in err
    written = json.loads((tmp_path / "p.json").read_text())
    assert written["adapted"] == {"converted from L to RGB; resized from 64x64": 3, "resized from 64x64": 1}
    assert [row["status"] for row in written["rows"]] == ["ok"] * 5
    for name in ("grey0.png", "grey1.png", "grey2.png", "big.png"):
        (folder / name).unlink()
    assert main(["predict", *RUN, "--detector", str(det), "--input", str(folder), "--out", str(tmp_path / "q.json")]) == 0
    assert "adapted" not in capsys.readouterr().err and json.loads((tmp_path / "q.json").read_text())["adapted"] == {}


WIDE_NET = """
from watermark_ood.models.architectures import SmallCNN


def build():
    return SmallCNN(num_classes=10, in_channels=3, width=80)
"""


@pytest.mark.parametrize("candidates", [[], ["--candidates", "mahalanobis", "gmm", "openmax", "multimahalanobis",
                                              "she"]])
def test_score_auto_ships_a_file_that_loads_for_wide_features_and_more_outputs_than_classes(
        candidates, wide_toy, tmp_path, capsys):
    """calibrate --score auto on a model of one's own with 160-d features and 10 outputs trained on 3 classes,
    with the default pool and with a pool of per-class kinds only (so the choice has per-class state):
    the file it writes loads, predicts and exports (or export refuses in one line)."""
    import torch

    model, norm, train = wide_toy
    data = tmp_path / "toy"
    data.mkdir()
    np.savez(data / "train.npz", x=train.images.permute(0, 2, 3, 1).numpy(), y=train.labels.numpy())
    from conftest import make_images

    test = make_images(60, seed=4)
    np.savez(data / "test.npz", x=test.images.permute(0, 2, 3, 1).numpy(), y=test.labels.numpy())
    (tmp_path / "wide.py").write_text(WIDE_NET)
    torch.save(model.state_dict(), tmp_path / "wide.pt")
    common = ["--model", f"{tmp_path / 'wide.py'}:build", "--checkpoint", str(tmp_path / "wide.pt"), "--mean",
              "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--device", "cpu", "--no-progress"]
    det = tmp_path / "auto.safetensors"
    assert main(["calibrate", *common, "--score", "auto", *candidates, "--tpr", "0.9",  # 18 calibration images
                 "--id-data", str(data), "--out", str(det)]) == 0
    meta = json.loads(det.with_suffix(".json").read_text())
    ranking = {(r["score"], r["watermark"]): r for r in meta["selection"]["ranking"]}
    assert "10 outputs but the ID data only 3 classes" in ranking[("she", "none")]["error"]  # refused, not shipped
    if candidates:
        assert set(meta["score"].split("+")) <= {"mahalanobis", "gmm", "openmax", "multimahalanobis"}
    np.savez(tmp_path / "inputs.npz", x=test.images[:12].permute(0, 2, 3, 1).numpy())
    assert main(["predict", *common, "--detector", str(det), "--input", str(tmp_path / "inputs.npz"), "--out",
                 str(tmp_path / "p.json")]) == 0
    assert len(json.loads((tmp_path / "p.json").read_text())["rows"]) == 12
    capsys.readouterr()
    code = main(["export", *common, "--detector", str(det), "--out", str(tmp_path / "exported")])
    err = capsys.readouterr().err
    assert code == 0 or (code == 2 and "cannot be exported" in err and len(err.strip().splitlines()) == 1)
