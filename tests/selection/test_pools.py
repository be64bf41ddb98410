"""The candidate pools of --score auto: shipped, all, named detectors; the CLI's --candidates."""

import json

import pytest
import torch
from conftest import write_npz_dataset
from torch import nn

from watermark_ood.cli import main
from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.detection.registry import AUTO_CANDIDATES, DETECTOR_KINDS
from watermark_ood.selection.pools import candidate_pool


def _net(dropout: float) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(12, 3))


def test_all_is_every_registered_detector_the_model_runs():
    sampling = {n for n, kind in DETECTOR_KINDS.items() if kind.reads == "sampling"}
    assert sampling and set(candidate_pool(["all"], _net(0.5))) == set(DETECTOR_KINDS)
    assert set(candidate_pool(["all"], _net(0.0))) == set(DETECTOR_KINDS) - sampling
    assert set(AUTO_CANDIDATES) < set(candidate_pool(["all"], _net(0.0)))


def test_names_add_to_a_pool_once_in_registry_order():
    pool = candidate_pool(["combood", "shipped", "knn"])
    assert pool == tuple(n for n in DETECTOR_KINDS if n in AUTO_CANDIDATES or n == "combood")
    assert candidate_pool(["gram", "energy", "gram"]) == ("energy", "gram")


@pytest.mark.parametrize("names, model, says", [
    (["mcd"], _net(0.0), "needs dropout"), (["nope"], None, "unknown name 'nope'"),
    (["knn+vim"], None, "single detectors"), ([], None, "at least one name")])
def test_bad_candidates_are_refused_in_one_line(names, model, says):
    with pytest.raises(WatermarkOODError, match=says) as error:
        candidate_pool(names, model)
    assert "\n" not in str(error.value)


def test_cli_ranks_exactly_the_named_pool_and_records_it(tmp_path, capsys):
    data = write_npz_dataset(tmp_path / "toy", n_train=400, n_test=20)
    det = tmp_path / "auto.safetensors"
    assert main(["calibrate", "--model", "small_cnn", "--random-weights", "--device", "cpu", "--no-progress", "--score", "auto",
                 "--candidates", "knn", "energy", "msp", "--id-data", str(data), "--out", str(det)]) == 0
    selection = json.loads(det.with_suffix(".json").read_text())["selection"]
    singles = {r["score"] for r in selection["ranking"] if "+" not in r["score"]}
    assert singles == {"msp", "energy", "knn"} and selection["candidates"] == ["msp", "energy", "knn"]
    assert "chose" in capsys.readouterr().out


@pytest.mark.parametrize("extra, says", [(["--candidates", "knn"], "--candidates is the pool of --score auto"),
                                         (["--score", "auto", "--candidates", "bogus"], "unknown name 'bogus'"),
                                         (["--score", "auto", "--candidates", "mcd"], "needs dropout")])
def test_cli_bad_candidates_exit_2_in_one_line_and_write_nothing(tmp_path, capsys, extra, says):
    data = write_npz_dataset(tmp_path / "toy", n_train=60, n_test=10)
    det = tmp_path / "d.safetensors"
    assert main(["calibrate", "--model", "small_cnn", "--random-weights", "--device", "cpu", "--no-progress", *extra,
                 "--id-data", str(data), "--out", str(det)]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1
    assert not any(tmp_path.glob("d.*"))


def test_cli_full_pool_ranks_every_detector_the_model_runs(tmp_path):
    """Every registered detector is a working candidate: each has a row (ranked, raced out, or failed with its
    reason), none crashes the choice, and the winner's file predicts."""
    from watermark_ood.detection.detector import Detector
    from watermark_ood.models import load_model
    from watermark_ood.runtime.device import ExecutionConfig

    data = write_npz_dataset(tmp_path / "toy", n_train=400, n_test=20)
    det = tmp_path / "all.safetensors"
    assert main(["calibrate", "--model", "small_cnn", "--random-weights", "--device", "cpu", "--no-progress", "--score", "auto",
                 "--candidates", "all", "--id-data", str(data), "--out", str(det)]) == 0
    selection = json.loads(det.with_suffix(".json").read_text())["selection"]
    model = load_model("small_cnn", None, None, 3).module
    assert tuple(selection["candidates"]) == candidate_pool(["all"], model)
    rows = {r["score"]: r for r in selection["ranking"] if "+" not in r["score"]}
    assert set(rows) == set(selection["candidates"])
    assert all(r["ok"] or r.get("error") for r in rows.values())
    assert sum(r["ok"] and not r.get("raced_out") for r in rows.values()) > len(rows) // 2
    loaded = Detector.load(det, model, ExecutionConfig(device="cpu"))
    assert loaded.score == selection["chosen"]["score"]
    assert len(loaded.predict(torch.rand(4, 3, 8, 8)).is_ood) == 4
