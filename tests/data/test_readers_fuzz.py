"""Property-based tests: every reader turns arbitrary or damaged input into a WatermarkOODError."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.data.images import ImageSet, load_npz
from watermark_ood.data.preprocessing import Normalization
from watermark_ood.data.readers import load_cifar, load_ood_data, load_svhn_mat
from watermark_ood.models.registry import read_state_dict
from watermark_ood.watermark.file import Watermark

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def valid_npz_bytes() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((2, 4, 4, 3), np.uint8), y=np.zeros(2, np.int64))
    return buffer.getvalue()


def valid_watermark_bytes(tmp_path) -> bytes:
    return Watermark(torch.ones(1, 3, 4, 4), {"objective": "msp"}).save(tmp_path / "w.safetensors").read_bytes()


def damaged(blob: bytes, data) -> bytes:
    """Random bytes, a truncation, or a few flipped bytes of a valid file."""
    kind = data.draw(st.sampled_from(["random", "truncate", "flip"]))
    if kind == "random":
        return data.draw(st.binary(max_size=300))
    if kind == "truncate":
        return blob[: data.draw(st.integers(0, max(0, len(blob) - 1)))]
    out = bytearray(blob)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(out) - 1))
        out[i] = data.draw(st.integers(0, 255))
    return bytes(out)


def loads_or_refuses(fn, *args) -> None:
    try:
        fn(*args)
    except WatermarkOODError:
        pass


@FUZZ
@given(st.data())
def test_npz_reader(tmp_path, data):
    path = tmp_path / "f.npz"
    path.write_bytes(damaged(valid_npz_bytes(), data))
    loads_or_refuses(load_npz, path)


@FUZZ
@given(st.data())
def test_watermark_reader(tmp_path, data):
    blob = valid_watermark_bytes(tmp_path)
    path = tmp_path / "d.safetensors"
    path.write_bytes(damaged(blob, data))
    loads_or_refuses(Watermark.load, path, (3, 4, 4))


@FUZZ
@given(st.data())
def test_checkpoint_reader(tmp_path, data):
    buffer = io.BytesIO()
    torch.save({"state_dict": {"module.w": torch.ones(3)}}, buffer)
    path = tmp_path / "c.pt"
    path.write_bytes(damaged(buffer.getvalue(), data))
    loads_or_refuses(read_state_dict, path)


@FUZZ
@given(st.data())
def test_svhn_reader(tmp_path, data):
    from scipy.io import savemat

    good = tmp_path / "good.mat"
    savemat(good, {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((2, 1))})
    path = tmp_path / "s.mat"
    path.write_bytes(damaged(good.read_bytes(), data))
    loads_or_refuses(load_svhn_mat, path)


@FUZZ
@given(st.data())
def test_cifar_reader(tmp_path, data):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir(exist_ok=True)
    blob = pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}, protocol=2)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(blob)
    (folder / "test_batch").write_bytes(damaged(blob, data))
    loads_or_refuses(load_cifar, tmp_path)


@FUZZ
@given(st.data())
def test_image_folder_reader(tmp_path, data):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir(exist_ok=True)
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, format="PNG")
    (folder / "a.png").write_bytes(damaged(buffer.getvalue(), data))
    loads_or_refuses(load_ood_data, folder, (3, 8, 8))


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(0, 5), min_size=1, max_size=5),
    dtype=st.sampled_from([np.uint8, np.float32, np.int64, np.bool_]),
    labels=st.one_of(st.none(), st.integers(-3, 3)),
)
def test_arrays_of_any_shape_dtype_and_labels(tmp_path_factory, shape, dtype, labels):
    path = tmp_path_factory.mktemp("npz") / "a.npz"
    arrays = {"x": np.zeros(shape, dtype)}
    if labels is not None:
        arrays["y"] = np.full(shape[:1], labels, np.int64)
    np.savez(path, **arrays)
    loads_or_refuses(load_npz, path)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=0, max_size=4),
       st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=0, max_size=4))
def test_normalization_values(mean, std):
    try:
        norm = Normalization(tuple(mean), tuple(std))
    except WatermarkOODError:
        return
    assert all(s > 0 for s in norm.std) and len(norm.mean) == len(norm.std) > 0
    with pytest.raises(WatermarkOODError):
        norm(torch.zeros(1, len(mean) + 1, 2, 2, dtype=torch.uint8))


def test_nan_and_inf_watermarks_are_refused(tmp_path):
    from safetensors.torch import save_file

    for value in (float("nan"), float("inf")):
        save_file({"watermark": torch.full((1, 3, 4, 4), value)}, str(tmp_path / "bad.safetensors"))
        with pytest.raises(WatermarkOODError, match="NaN or infinite"):
            Watermark.load(tmp_path / "bad.safetensors")


def test_empty_and_out_of_range_label_sets(tmp_path):
    with pytest.raises(WatermarkOODError, match="empty"):
        ImageSet(torch.zeros(0, 3, 4, 4, dtype=torch.uint8), torch.zeros(0))
    from watermark_ood.data.readers import load_id_data

    folder = tmp_path / "ds"
    folder.mkdir()
    np.savez(folder / "train.npz", x=np.zeros((4, 4, 4, 3), np.uint8), y=np.array([0, 1, 0, 1]))
    np.savez(folder / "test.npz", x=np.zeros((2, 4, 4, 3), np.uint8), y=np.array([0, 7]))
    with pytest.raises(WatermarkOODError, match="label 7"):
        load_id_data(folder)
    np.savez(folder / "test.npz", x=np.zeros((2, 4, 4, 3), np.uint8), y=np.array([0, -2]))
    with pytest.raises(WatermarkOODError, match="labels"):
        load_id_data(folder)


@FUZZ
@given(st.data())
def test_detector_reader(tmp_path, data):
    from watermark_ood.detection.detector import WatermarkDetector
    from watermark_ood.models.architectures import SmallCNN

    detector = WatermarkDetector(SmallCNN(3, 3, 4), Normalization((0.5,) * 3, (0.5,) * 3),
                                 Watermark(torch.zeros(1, 3, 4, 4)), "msp")
    detector.threshold, detector.tpr = 0.5, 0.95
    blob = detector.save(tmp_path / "good.safetensors").read_bytes()
    path = tmp_path / "d.safetensors"
    path.write_bytes(damaged(blob, data))
    loads_or_refuses(WatermarkDetector.read, path)
