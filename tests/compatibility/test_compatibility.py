"""Files written by earlier releases keep loading with the same meaning (tests/compatibility/fixtures/v1, written by commit
1f09b03 with tests/compatibility/fixtures/make_v1.py; tests/compatibility/fixtures/v2, written by commit 4aab32d, before the layered package,
with tests/compatibility/fixtures/make_v2.py: conformal calibrations, per-class thresholds, p-values): detector files predict the scores and decisions recorded then, the
watermark and the fit checkpoint load, and results.json's fields are all still written (extended, never renamed).
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from watermark_ood.cli import main
from watermark_ood.data.images import load_npz
from watermark_ood.detection.detector import Detector
from watermark_ood.models.registry import load_model
from watermark_ood.reporting.results import validate_run
from watermark_ood.watermark.file import Watermark

V1 = Path(__file__).parent / "fixtures" / "v1"
V2 = Path(__file__).parent / "fixtures" / "v2"
DETECTORS = sorted(V1.glob("detector-*.safetensors"))
DETECTORS_V2 = sorted(V2.glob("detector-*.safetensors"))
COMMON = ["--model", "small_cnn", "--checkpoint", str(V1 / "small_cnn.safetensors"), "--device", "cpu",
          "--no-progress"]


def _predict_as_recorded(folder: Path, path: Path):
    """Load a fixture detector, predict its recorded inputs, and check scores and decisions against the record."""
    model = load_model("small_cnn", folder / "small_cnn.safetensors")
    detector = Detector.load(path, model.module)
    prediction = detector.predict(load_npz(folder / "inputs.npz"))
    rows = json.loads(path.with_name(path.stem + ".predictions.json").read_text())["rows"]
    assert np.allclose(prediction.scores, [r["score"] for r in rows], rtol=1e-5, atol=1e-6)
    assert prediction.is_ood.tolist() == [r["is_ood"] for r in rows]
    return detector, prediction, rows


def test_fixtures_are_there():
    assert len(DETECTORS) == 4 and (V1 / "fit" / "watermark.safetensors").is_file()


@pytest.mark.parametrize("path", DETECTORS, ids=lambda p: p.stem)
def test_old_detector_files_predict_what_they_predicted(path):
    detector, prediction, _ = _predict_as_recorded(V1, path)
    assert detector.calibration is None and prediction.p_values is None  # older files: a threshold, no p-values


def test_v2_fixtures_are_there():
    assert len(DETECTORS_V2) == 6 and (V2 / "evaluate-no-watermark" / "results.json").is_file()


@pytest.mark.parametrize("path", DETECTORS_V2, ids=lambda p: p.stem)
def test_v2_detector_files_predict_scores_decisions_classes_and_p_values(path):
    _, prediction, rows = _predict_as_recorded(V2, path)
    assert prediction.classes.tolist() == [r["predicted_class"] for r in rows]
    assert np.allclose(prediction.p_values, [r["p_value"] for r in rows], atol=1e-9)


def test_v2_results_json_without_a_watermark_is_still_written(tmp_path):
    old = json.loads((V2 / "evaluate-no-watermark" / "results.json").read_text())
    common = ["--model", "small_cnn", "--checkpoint", str(V2 / "small_cnn.safetensors"), "--device", "cpu",
              "--no-progress"]
    assert main(["evaluate", *common, "--scores", "energy", "knn", "--id-data", str(V2 / "toy"),
                 "--ood-data", str(V2 / "inputs.npz"), "--out", str(tmp_path / "ev")]) == 0
    old_run = old["runs"][0]
    new_run = json.loads((tmp_path / "ev" / "results.json").read_text())["runs"][0]
    validate_run(old_run)
    assert set(old_run) <= set(new_run) and new_run["has_watermark"] is old_run["has_watermark"] is False
    assert _same_numbers(old_run, new_run)


def _same_numbers(old, new) -> bool:
    """Every number of ``old`` is in ``new`` under the same keys (timings aside)."""
    if isinstance(old, dict):
        return all(k in new and (k in ("timing", "cost") or _same_numbers(v, new[k])) for k, v in old.items())
    if isinstance(old, float):
        return abs(old - new) < 1e-9
    return old == new


def test_old_watermark_and_checkpoint_resume(tmp_path):
    old = Watermark.load(V1 / "fit" / "watermark.safetensors")
    assert old.metadata["objective"] == "energy" and old.image_shape == (3, 8, 8)
    shutil.copytree(V1 / "fit", tmp_path / "fit")
    assert main(["fit", *COMMON, "--id-data", str(V1 / "toy"), "--epochs", "1", "--batch-size", "16",
                 "--objective", "energy", "--out", str(tmp_path / "fit")]) == 0  # the old checkpoint: finished
    assert torch.equal(Watermark.load(tmp_path / "fit" / "watermark.safetensors").tensor, old.tensor)


def test_results_json_fields_are_still_written(tmp_path):
    old = json.loads((V1 / "evaluate" / "results.json").read_text())
    for run in old["runs"]:
        validate_run(run)
    assert main(["evaluate", *COMMON, "--watermark", str(V1 / "fit" / "watermark.safetensors"), "--id-data",
                 str(V1 / "toy"), "--ood-data", str(V1 / "inputs.npz"), "--out", str(tmp_path / "ev")]) == 0
    new = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert new["schema_version"] == old["schema_version"] == 1
    old_run, new_run = old["runs"][0], new["runs"][0]
    assert set(old_run) <= set(new_run)
    for block in ("baseline", "watermarked"):
        assert set(old_run[block]) == set(new_run[block])
        for name, metrics in old_run[block].items():
            assert set(metrics) == set(new_run[block][name])
            assert all(abs(metrics[m] - new_run[block][name][m]) < 1e-9 for m in metrics)  # the same meaning
    assert old_run["accuracy"] == new_run["accuracy"]
