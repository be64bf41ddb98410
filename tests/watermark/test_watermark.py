import json

import pytest
import torch

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.watermark.file import Watermark


def test_round_trip_keeps_tensor_and_metadata(tmp_path):
    w = Watermark(torch.randn(1, 3, 8, 8), {"objective": "energy", "hyperparameters": {"sigma": 1.5}})
    path = w.save(tmp_path / "w.safetensors")
    loaded = Watermark.load(path, expected_shape=(3, 8, 8))
    assert torch.equal(loaded.tensor, w.tensor)
    assert loaded.metadata == w.metadata
    assert json.loads((tmp_path / "w.json").read_text())["objective"] == "energy"


def test_wrong_shape_is_refused(tmp_path):
    path = Watermark(torch.zeros(1, 3, 8, 8)).save(tmp_path / "w.safetensors")
    with pytest.raises(WatermarkOODError, match="shape"):
        Watermark.load(path, expected_shape=(3, 32, 32))
    with pytest.raises(WatermarkOODError):
        Watermark(torch.zeros(3, 8, 8))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "header"])
def test_corrupted_files_give_clear_errors(tmp_path, damage):
    path = Watermark(torch.randn(1, 1, 4, 4), {"objective": "msp"}).save(tmp_path / "w.safetensors")
    blob = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(blob[: len(blob) - 10])
    elif damage == "garbage":
        path.write_bytes(b"\x00\x01not a safetensors file at all")
    else:
        path.write_bytes(blob[:8] + b"[" + blob[9:])
    with pytest.raises(WatermarkOODError, match="w.safetensors"):
        Watermark.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(WatermarkOODError, match="not found"):
        Watermark.load(tmp_path / "none.safetensors")


def test_nan_watermark_refused():
    with pytest.raises(WatermarkOODError, match="NaN"):
        Watermark(torch.full((1, 1, 2, 2), float("nan")))


def test_apply_adds_in_normalized_space():
    w = Watermark(torch.ones(1, 1, 2, 2))
    assert torch.equal(w.apply(torch.zeros(3, 1, 2, 2)), torch.ones(3, 1, 2, 2))
    with pytest.raises(WatermarkOODError):
        w.apply(torch.zeros(3, 1, 4, 4))
