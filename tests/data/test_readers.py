import os
import pickle

import numpy as np
import pytest
import torch
from conftest import make_images, write_npz_dataset
from PIL import Image
from scipy.io import savemat

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.data.images import load_npz
from watermark_ood.data.readers import load_cifar, load_id_data, load_ood_data, load_svhn_mat


def write_cifar(root, kind="cifar10", n=20):
    """torchvision's python layout, pickled as the original files are (dict with a NumPy 'data' array)."""
    rng = np.random.default_rng(0)
    if kind == "cifar10":
        folder = root / "cifar-10-batches-py"
        files, key = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], "labels"
    else:
        folder = root / "cifar-100-python"
        files, key = ["train", "test"], "fine_labels"
    folder.mkdir(parents=True)
    for f in files:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 key: list(rng.integers(0, 10, n)), "batch_label": "x"}
        with open(folder / f, "wb") as handle:
            pickle.dump(batch, handle, protocol=2)
    return folder


def write_image_tree(root, sizes=((40, 50), (32, 32)), classes=("a", "b"), per_class=3, mode="RGB"):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = sizes[i % len(sizes)]
            shape = (h, w, 3) if mode == "RGB" else (h, w)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / c / f"{i}.png")
    return root


# ---------------------------------------------------------------------- npz
def test_npz_folder_layout(tmp_path):
    train, test = load_id_data(write_npz_dataset(tmp_path / "toy"))
    assert train.image_shape == (3, 8, 8) and len(train) == 64 and len(test) == 30
    assert train.num_classes == 3 and train.name == "toy-train"


def test_npz_round_trips_pixels(tmp_path):
    data = make_images(5)
    np.savez(tmp_path / "s.npz", x=data.images.permute(0, 2, 3, 1).numpy())
    loaded = load_npz(tmp_path / "s.npz")
    assert torch.equal(loaded.images, data.images) and (loaded.labels == -1).all() and loaded.name == "s"


@pytest.mark.parametrize("arrays, message", [
    (dict(x=np.zeros((4, 8, 8, 3), np.float32)), "uint8"),
    (dict(y=np.zeros(4, np.int64)), "no array 'x'"),
    (dict(x=np.zeros((4, 8, 8, 3), np.uint8), y=np.zeros(3, np.int64)), "'y' must be 4"),
    (dict(x=np.zeros((0, 8, 8, 3), np.uint8)), "empty"),
    (dict(x=np.zeros((8, 8), np.uint8)), "N x H x W"),
])
def test_malformed_npz(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(WatermarkOODError, match=message):
        load_npz(tmp_path / "bad.npz")


def test_truncated_and_pickled_npz(tmp_path):
    np.savez(tmp_path / "ok.npz", x=np.zeros((4, 8, 8, 3), np.uint8))
    blob = (tmp_path / "ok.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(WatermarkOODError, match="cut.npz"):
        load_npz(tmp_path / "cut.npz")
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(WatermarkOODError, match="obj.npz"):
        load_npz(tmp_path / "obj.npz")


def test_missing_id_data_lists_the_layouts(tmp_path):
    with pytest.raises(WatermarkOODError, match="train.npz"):
        load_id_data(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WatermarkOODError, match="ImageFolder"):
        load_id_data(tmp_path / "empty")
    write_npz_dataset(tmp_path / "half")
    (tmp_path / "half" / "test.npz").unlink()
    with pytest.raises(WatermarkOODError, match="test.npz"):
        load_id_data(tmp_path / "half")


# -------------------------------------------------------------------- CIFAR
@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_layouts(tmp_path, kind):
    write_cifar(tmp_path, kind)
    train, test = load_id_data(tmp_path)
    assert train.image_shape == (3, 32, 32)
    assert len(train) == (100 if kind == "cifar10" else 20) and len(test) == 20
    assert train.name == f"{kind}-train"


def test_cifar_pixels_keep_channel_order(tmp_path):
    folder = write_cifar(tmp_path)
    with open(folder / "test_batch", "rb") as handle:
        raw = pickle.load(handle)["data"][0]
    _, test = load_cifar(tmp_path)
    assert torch.equal(test.images[0, 0].flatten(), torch.from_numpy(raw[:1024]))


class Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_CIFAR",))


def test_cifar_batch_with_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = write_cifar(tmp_path)
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump({"data": Evil(), "labels": [0]}, handle)
    with pytest.raises(WatermarkOODError, match="refused"):
        load_cifar(tmp_path)
    assert not (tmp_path / "PWNED_CIFAR").exists()


def test_cifar_missing_batch(tmp_path):
    folder = write_cifar(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(WatermarkOODError, match="data_batch_3"):
        load_cifar(tmp_path)


# -------------------------------------------------------------- image folders
def test_imagefolder_id_layout(tmp_path):
    write_image_tree(tmp_path / "ds" / "train", sizes=((32, 32),))
    write_image_tree(tmp_path / "ds" / "test", sizes=((32, 32),), per_class=2)
    train, test = load_id_data(tmp_path / "ds")
    assert len(train) == 6 and len(test) == 4 and train.image_shape == (3, 32, 32)
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_ood_image_folder_resizes_shorter_side_then_center_crops(tmp_path):
    root = write_image_tree(tmp_path / "Textures", sizes=((40, 64), (100, 50), (32, 32)))
    ood = load_ood_data(root, (3, 32, 32))
    assert ood.image_shape == (3, 32, 32) and len(ood) == 6 and ood.name == "Textures"
    assert (ood.labels == -1).all()
    # Same as torchvision's Resize(32) + CenterCrop(32) of the first file.
    from torchvision import transforms

    with Image.open(root / "a" / "0.png") as img:
        expected = transforms.PILToTensor()(transforms.CenterCrop(32)(transforms.Resize(32)(img.convert("RGB"))))
    assert torch.equal(ood.images[0], expected)


def test_flat_grey_folder_becomes_rgb(tmp_path):
    root = tmp_path / "iSUN"
    write_image_tree(root, classes=("",), mode="L")
    ood = load_ood_data(root, (3, 32, 32))
    assert ood.image_shape == (3, 32, 32)
    assert torch.equal(ood.images[:, 0], ood.images[:, 1])


def test_bad_image_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(WatermarkOODError, match="no images"):
        load_ood_data(tmp_path / "empty", (3, 32, 32))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(WatermarkOODError, match="x.png"):
        load_ood_data(tmp_path / "broken", (3, 32, 32))


# ---------------------------------------------------------------------- SVHN
def test_svhn_mat(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (32, 32, 3, 7), dtype=np.uint8)
    savemat(tmp_path / "test_32x32.mat", {"X": x, "y": np.ones((7, 1))})
    ood = load_ood_data(tmp_path / "test_32x32.mat", (3, 32, 32))
    assert len(ood) == 7 and ood.name == "test_32x32"
    assert torch.equal(ood.images[3].permute(1, 2, 0), torch.from_numpy(x[..., 3]))


def test_malformed_svhn(tmp_path):
    savemat(tmp_path / "a.mat", {"Z": np.zeros(3)})
    with pytest.raises(WatermarkOODError, match="'X'"):
        load_svhn_mat(tmp_path / "a.mat")
    savemat(tmp_path / "b.mat", {"X": np.zeros((32, 32, 3, 2))})
    with pytest.raises(WatermarkOODError, match="uint8"):
        load_svhn_mat(tmp_path / "b.mat")
    (tmp_path / "c.mat").write_bytes(b"garbage" * 20)
    with pytest.raises(WatermarkOODError, match="c.mat"):
        load_svhn_mat(tmp_path / "c.mat")


# ------------------------------------------------------------ npz and synthetic OOD
def test_ood_npz_is_resized_and_unlabelled(tmp_path):
    np.savez(tmp_path / "big.npz", x=np.zeros((3, 64, 64, 3), np.uint8), y=np.zeros(3, np.int64))
    ood = load_ood_data(tmp_path / "big.npz", (3, 32, 32))
    assert ood.image_shape == (3, 32, 32) and (ood.labels == -1).all()


def test_synthetic_sets_are_seeded():
    a = load_ood_data("synthetic:gaussian", (3, 8, 8), count=10, seed=1)
    b = load_ood_data("synthetic:gaussian", (3, 8, 8), count=10, seed=1)
    assert torch.equal(a.images, b.images) and a.name == "gaussian"
    assert load_ood_data("synthetic:uniform", (1, 8, 8), count=4).image_shape == (1, 8, 8)
    with pytest.raises(WatermarkOODError):
        load_ood_data("synthetic:perlin", (3, 8, 8))


def test_channel_mismatch_and_unknown_file_type(tmp_path):
    np.savez(tmp_path / "rgb.npz", x=np.zeros((3, 8, 8, 3), np.uint8))
    with pytest.raises(WatermarkOODError, match="channels"):
        load_ood_data(tmp_path / "rgb.npz", (1, 8, 8))
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(WatermarkOODError, match="unsupported"):
        load_ood_data(tmp_path / "x.csv", (3, 8, 8))
