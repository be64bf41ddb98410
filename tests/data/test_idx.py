"""The MNIST family's idx files (issue 27): read in torchvision's layouts, one-line errors for damaged ones."""

import gzip

import numpy as np
import pytest
import torch

from watermark_ood.cli import main
from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.data.idx import read_idx, write_idx
from watermark_ood.data.images import ImageSet, split_classes
from watermark_ood.data.readers import load_id_data


def idx_folder(root, n_train=40, n_test=12, gz=True, size=28):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, size, size), dtype=np.uint8))
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", np.arange(n, dtype=np.uint8) % 10)
    return root


@pytest.mark.parametrize("layout, gz", [("", True), ("raw", False), ("FashionMNIST/raw", True)])
def test_reads_torchvision_layouts_gzipped_or_not(tmp_path, layout, gz):
    idx_folder(tmp_path / "fm" / layout if layout else tmp_path / "fm", gz=gz)
    train, test = load_id_data(tmp_path / "fm")
    assert train.images.shape == (40, 3, 28, 28) and test.images.shape == (12, 3, 28, 28)  # grey, repeated to 3
    assert torch.equal(train.images[:, 0], train.images[:, 2]) and train.labels.tolist()[:12] == list(range(10)) + [0, 1]
    grey, _ = load_id_data(tmp_path / "fm", channels=1)
    assert grey.images.shape == (40, 1, 28, 28)


def test_idx_round_trip_and_bad_files(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.idx", array)
    assert np.array_equal(read_idx(tmp_path / "a.idx"), array)
    blob = (tmp_path / "a.idx").read_bytes()
    cases = {"truncated": blob[:-3], "magic": b"\x00\x00\x0d\x03" + blob[4:], "short": b"\x00",
             "gz-junk": b"\x1f\x8b junk"}
    for name, data in cases.items():
        path = tmp_path / (f"{name}.gz" if name == "gz-junk" else f"{name}.idx")
        path.write_bytes(data)
        with pytest.raises(WatermarkOODError) as error:
            read_idx(path)
        assert str(path) in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(WatermarkOODError, match="3 dimensions, expected 1"):
        read_idx(tmp_path / "a.idx", ndim=1)


def test_labels_of_another_length_and_the_cli(tmp_path, capsys):
    root = idx_folder(tmp_path / "fm")
    write_idx(root / "t10k-labels-idx1-ubyte.gz", np.zeros(11, dtype=np.uint8))
    with pytest.raises(WatermarkOODError, match="11 labels for the 12 images"):
        load_id_data(root)
    gzip.open(root / "train-images-idx3-ubyte.gz", "wb").write(b"\x00\x00\x08\x03" + b"\x00" * 12)
    code = main(["calibrate", "--model", "small_cnn", "--random-weights", "--device", "cpu", "--no-progress", "--id-data", str(root),
                 "--score", "energy", "--out", str(tmp_path / "never.safetensors")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "train-images-idx3-ubyte.gz" in err and len(err.splitlines()) == 1


def test_class_split_for_near_ood():
    images = ImageSet(torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.arange(10) % 5, "toy")
    known, unknown = split_classes(images, [0, 1, 2])
    assert known.labels.tolist() == [0, 1, 2, 0, 1, 2] and len(unknown) == 4 and (unknown.labels == -1).all()
    for bad, message in (([0, 7], r"\[7\] not found"), ([1, 1], "distinct"), ([0, 1, 2, 3, 4], "no class unknown")):
        with pytest.raises(WatermarkOODError, match=message):
            split_classes(images, bad)
