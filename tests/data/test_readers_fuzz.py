"""Property-based tests: every reader turns arbitrary or damaged input into a one-line WatermarkOODError, or reads
it into what it promises: the right type, shape and dtype, and the original's values when the bytes are the
original's (a damaged file is never accepted as something else, and no other exception escapes)."""

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


NPZ_X = np.arange(2 * 5 * 5 * 3, dtype=np.uint8).reshape(2, 5, 5, 3)  # 5 x 5: no axis could be the channels
NPZ_Y = np.array([1, 0], np.int64)


def valid_npz_bytes() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=NPZ_X, y=NPZ_Y)
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


def loads_or_refuses(fn, *args, check=None):
    """``fn(*args)`` either refuses in one non-empty line, or returns what ``check`` accepts (None: refused)."""
    try:
        result = fn(*args)
    except WatermarkOODError as error:
        text = str(error)
        assert text and "\n" not in text, text
        return None
    if check is not None:
        check(result)
    return result


def image_set_of(shape: tuple[int, ...], labels: np.ndarray | None, original: bool, pixels: np.ndarray | None = None):
    """A check: an ImageSet of uint8 images of ``shape`` (C, H, W) with int64 labels; the original's values when the
    file is the original."""
    def check(images):
        assert isinstance(images, ImageSet) and images.images.dtype == torch.uint8
        assert tuple(images.image_shape) == shape and images.labels.dtype == torch.int64
        assert len(images.labels) == len(images.images)
        if original:
            if labels is not None:
                assert np.array_equal(images.labels.numpy(), labels)
            if pixels is not None:
                assert np.array_equal(images.images.numpy(), pixels)
    return check


def test_no_single_byte_change_of_an_npz_is_read_as_something_else(tmp_path):
    """Exhaustive over one position in 13 and every value: refused in one line, or exactly the original (a damaged
    central directory once renamed or hid the labels 'y', read as an unlabelled set)."""
    blob = valid_npz_bytes()
    check = image_set_of((3, 5, 5), NPZ_Y, True, NPZ_X.transpose(0, 3, 1, 2))
    for position in [*range(0, len(blob), 13), *range(len(blob) - 120, len(blob))]:
        for value in range(256):
            if value != blob[position]:
                mutated = bytearray(blob)
                mutated[position] = value
                (tmp_path / "m.npz").write_bytes(bytes(mutated))
                loads_or_refuses(load_npz, tmp_path / "m.npz", check=check)


@FUZZ
@given(st.data())
def test_npz_reader(tmp_path, data):
    path = tmp_path / "f.npz"
    blob = damaged(valid_npz_bytes(), data)
    path.write_bytes(blob)
    loads_or_refuses(load_npz, path, check=image_set_of((3, 5, 5), NPZ_Y, blob == valid_npz_bytes(),
                                                        NPZ_X.transpose(0, 3, 1, 2)))


@FUZZ
@given(st.data())
def test_watermark_reader(tmp_path, data):
    blob = valid_watermark_bytes(tmp_path)
    path = tmp_path / "d.safetensors"
    mutated = damaged(blob, data)
    path.write_bytes(mutated)

    def check(mark):
        assert isinstance(mark, Watermark) and tuple(mark.tensor.shape) == (1, 3, 4, 4)
        assert mark.tensor.is_floating_point() and bool(torch.isfinite(mark.tensor).all())
        if mutated == blob:
            assert torch.equal(mark.tensor, torch.ones(1, 3, 4, 4)) and mark.metadata["objective"] == "msp"
    loads_or_refuses(Watermark.load, path, (3, 4, 4), check=check)


@FUZZ
@given(st.data())
def test_checkpoint_reader(tmp_path, data):
    buffer = io.BytesIO()
    torch.save({"state_dict": {"module.w": torch.ones(3)}}, buffer)
    path = tmp_path / "c.pt"
    mutated = damaged(buffer.getvalue(), data)
    path.write_bytes(mutated)

    def check(state):
        assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
        if mutated == buffer.getvalue():
            assert list(state) == ["w"] and torch.equal(state["w"], torch.ones(3))  # the prefix removed
    loads_or_refuses(read_state_dict, path, check=check)


@FUZZ
@given(st.data())
def test_svhn_reader(tmp_path, data):
    from scipy.io import savemat

    good = tmp_path / "good.mat"
    pixels = np.arange(32 * 32 * 3 * 2, dtype=np.uint32).astype(np.uint8).reshape(32, 32, 3, 2)
    savemat(good, {"X": pixels, "y": np.ones((2, 1))})
    path = tmp_path / "s.mat"
    mutated = damaged(good.read_bytes(), data)
    path.write_bytes(mutated)
    loads_or_refuses(load_svhn_mat, path, check=image_set_of((3, 32, 32), np.full(2, -1), mutated == good.read_bytes(),
                                                             pixels.transpose(3, 2, 0, 1)))


@FUZZ
@given(st.data())
def test_cifar_reader(tmp_path, data):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir(exist_ok=True)
    blob = pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}, protocol=2)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(blob)
    mutated = damaged(blob, data)
    (folder / "test_batch").write_bytes(mutated)

    def check(splits):
        train, test = splits
        image_set_of((3, 32, 32), np.array([0, 1] * 5), True)(train)  # the untouched batches, exactly
        image_set_of((3, 32, 32), np.array([0, 1]), mutated == blob)(test)
    loads_or_refuses(load_cifar, tmp_path, check=check)


@FUZZ
@given(st.data())
def test_image_folder_reader(tmp_path, data):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir(exist_ok=True)
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, format="PNG")
    mutated = damaged(buffer.getvalue(), data)
    (folder / "a.png").write_bytes(mutated)
    loads_or_refuses(load_ood_data, folder, (3, 8, 8), check=image_set_of((3, 8, 8), np.full(1, -1),
                                                                          mutated == buffer.getvalue(),
                                                                          np.zeros((1, 3, 8, 8), np.uint8)))


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
    images = loads_or_refuses(load_npz, path)
    if images is not None:  # only what the reader promises: uint8 N x H x W x C (or grey N x H x W) with N > 0
        assert dtype == np.uint8 and len(shape) in (3, 4) and shape[0] > 0 and min(shape) > 0
        assert len(images) == shape[0] and images.images.dtype == torch.uint8
        assert np.array_equal(images.labels.numpy(), np.full(shape[0], -1 if labels is None else labels))


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
    mutated = damaged(blob, data)
    path.write_bytes(mutated)

    def check(read):
        meta, watermark = read
        assert meta["score"] == "msp" or mutated != blob
        assert watermark is None or tuple(watermark.tensor.shape) == (1, 3, 4, 4)
        if mutated == blob:
            assert meta["threshold"] == 0.5 and meta["tpr"] == 0.95 and torch.equal(watermark.tensor,
                                                                                   torch.zeros(1, 3, 4, 4))
    loads_or_refuses(WatermarkDetector.read, path, check=check)


@FUZZ
@given(st.data())
def test_idx_reader(tmp_path, data):
    from watermark_ood.data.idx import read_idx, write_idx

    pixels = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "good.idx", pixels)
    blob = (tmp_path / "good.idx").read_bytes()
    mutated = damaged(blob, data)
    (tmp_path / "m.idx").write_bytes(mutated)

    def check(array):  # what its header declares, as uint8; the original's values when unchanged
        assert array.dtype == np.uint8 and array.shape == tuple(int.from_bytes(mutated[4 + 4 * i:8 + 4 * i], "big")
                                                                for i in range(mutated[3]))
        if mutated == blob:
            assert np.array_equal(array, pixels)
    loads_or_refuses(read_idx, tmp_path / "m.idx", check=check)


@pytest.mark.parametrize("byte", [0, 1, 2, 3])
@pytest.mark.parametrize("ndim", [None, 3])
def test_every_byte_of_the_idx_magic_number_is_checked(tmp_path, byte, ndim):
    """Two zero bytes, the uint8 type code, the number of dimensions: any other value is refused in one line."""
    from watermark_ood.data.idx import read_idx, write_idx

    write_idx(tmp_path / "good.idx", np.zeros((2, 3, 4), np.uint8))
    assert read_idx(tmp_path / "good.idx", ndim).shape == (2, 3, 4)
    for value in (1, 0x80, 0xFF, 0x09 if byte == 2 else 2):
        blob = bytearray((tmp_path / "good.idx").read_bytes())
        if blob[byte] == value:
            continue
        blob[byte] = value
        (tmp_path / "bad.idx").write_bytes(bytes(blob))
        with pytest.raises(WatermarkOODError) as error:
            read_idx(tmp_path / "bad.idx", ndim)
        assert "\n" not in str(error.value) and str(tmp_path / "bad.idx") in str(error.value)
