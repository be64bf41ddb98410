"""Readers for the on-disk layouts users already have. Nothing here downloads.

ID data (a folder):
  * ``train.npz`` + ``test.npz`` (``x`` uint8 N x H x W x C, ``y`` int64);
  * torchvision's CIFAR layout: ``cifar-10-batches-py/`` or ``cifar-100-python/``
    (the folder itself or its parent);
  * an ImageFolder layout: ``train/<class>/*.png`` and ``test/<class>/*.png``, or ImageNet's
    ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` (torchvision's ImageNet layout);
  * the MNIST family's idx files (``train-images-idx3-ubyte[.gz]`` ..., also under ``raw/`` or
    ``<Name>/raw/`` as torchvision lays them out): grey images, repeated to 3 channels when the model wants 3.
Image folders (ID or OOD) are loaded into memory when their decoded size is below
``DataOptions.stream_above_bytes`` and streamed from disk batch by batch above it (or as ``stream`` says).
OOD data (a file or a folder): an image folder (flat, or with class
subfolders, as Textures / Places365 / LSUN / iSUN ship), SVHN's
``test_32x32.mat``, an ``.npz``, or ``synthetic:gaussian`` / ``synthetic:uniform``.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.io import loadmat
from torchvision.transforms.v2 import functional as TF

from watermark_ood.core.errors import WatermarkOODError, describe
from watermark_ood.data.idx import idx_folder, load_idx_splits
from watermark_ood.data.images import ImageSet, images_from_array, load_npz
from watermark_ood.data.streaming import STREAM_ABOVE_BYTES, FileImageSet, ImageTransform
from watermark_ood.data.synthetic import gaussian_set, uniform_set

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
ID_LAYOUTS = (
    "a folder with train.npz and test.npz (x uint8 NxHxWxC, y int64), "
    "torchvision's CIFAR layout (cifar-10-batches-py/ or cifar-100-python/), "
    "an ImageFolder layout (train/<class>/*.png and test/<class>/*.png, or ImageNet's train/<wnid>/*.JPEG "
    "and val/<wnid>/*.JPEG), or MNIST-family idx files (train-images-idx3-ubyte[.gz], ...)"
)


@dataclass(frozen=True)
class DataOptions:
    """How image folders are read. ``stream`` None: stream when the decoded set exceeds ``stream_above_bytes``."""

    stream: bool | None = None
    stream_above_bytes: int = STREAM_ABOVE_BYTES
    workers: int = 2  # DataLoader processes decoding images
    skip_bad_images: bool = False
    resize: int | None = None  # shorter side before the center crop (e.g. 256 for 224 crops); default: the size
    random_resized_crop: bool = False  # training images only

    def folder_set(self, files: list[Path], labels: list[int], name: str, size: int | None, channels: int,
                   training: bool = False) -> "ImageSet | FileImageSet":
        """A folder's files, streamed or decoded into memory as these options say."""
        transform = ImageTransform(size, self.resize, channels, self.random_resized_crop and training)
        streamed = FileImageSet(files, torch.tensor(labels, dtype=torch.int64), name, transform, self.workers,
                                self.skip_bad_images)
        if self.stream is True or (self.stream is None and streamed.decoded_bytes() > self.stream_above_bytes):
            return streamed
        return streamed.materialize()


# ------------------------------------------------------------------ CIFAR pickles
class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches (dicts, lists, numbers, NumPy arrays) and refuses anything else.

    CIFAR's python format is a pickle; a plain ``pickle.load`` would run
    whatever code a tampered file carries, so only NumPy's array
    reconstruction is allowed.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to unpickle {module}.{name}: only arrays are allowed")


def _read_cifar_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            batch = _ArrayOnlyUnpickler(io.BufferedReader(handle), encoding="latin1").load()
    except FileNotFoundError:
        raise WatermarkOODError(f"{path}: missing CIFAR batch file") from None
    except Exception as error:  # noqa: BLE001 - a damaged pickle fails in many ways
        raise WatermarkOODError(f"{path}: not a readable CIFAR batch ({describe(error)})") from None
    if not isinstance(batch, dict) or "data" not in batch:
        raise WatermarkOODError(f"{path}: a CIFAR batch is a dict with 'data' and labels")
    return batch


def _cifar_split(folder: Path, files: list[str], label_key: str, name: str) -> ImageSet:
    xs, ys = [], []
    for file in files:
        batch = _read_cifar_batch(folder / file)
        data = np.asarray(batch["data"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise WatermarkOODError(f"{folder / file}: 'data' must be uint8 N x 3072, got {data.dtype} {data.shape}")
        if label_key not in batch:
            raise WatermarkOODError(f"{folder / file}: no {label_key!r} in the batch")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[label_key], dtype=np.int64))
    x, y = np.concatenate(xs), np.concatenate(ys)
    if len(x) != len(y):
        raise WatermarkOODError(f"{folder}: {len(x)} images but {len(y)} labels")
    return ImageSet(torch.from_numpy(x), torch.from_numpy(y), name)


def _cifar_folder(root: Path) -> tuple[Path, str] | None:
    for sub, kind in (("cifar-10-batches-py", "cifar10"), ("cifar-100-python", "cifar100")):
        if root.name == sub:
            return root, kind
        if (root / sub).is_dir():
            return root / sub, kind
    return None


def load_cifar(root: str | Path) -> tuple[ImageSet, ImageSet]:
    """CIFAR-10/100 train and test sets from torchvision's on-disk python layout."""
    root = Path(root)
    found = _cifar_folder(root)
    if found is None:
        raise WatermarkOODError(f"{root}: no cifar-10-batches-py/ or cifar-100-python/ folder here")
    folder, kind = found
    if kind == "cifar10":
        train_files, test_files, key = [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"
    else:
        train_files, test_files, key = ["train"], ["test"], "fine_labels"
    return _cifar_split(folder, train_files, key, f"{kind}-train"), _cifar_split(folder, test_files, key, f"{kind}-test")


# --------------------------------------------------------------------- images
def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_image_folder(folder: str | Path, size: int | None, channels: int = 3, name: str | None = None,
                      with_labels: bool = False, classes: list[str] | None = None,
                      options: DataOptions | None = None, training: bool = False) -> "ImageSet | FileImageSet":
    """Every image below ``folder``; with ``with_labels`` the first-level subfolders are the classes.

    Read as ``options`` say: decoded into memory (by default, below 2 GiB decoded) or streamed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise WatermarkOODError(f"{folder}: image folder not found")
    files = image_files(folder)
    if not files:
        raise WatermarkOODError(
            f"{folder}: no images found (expected {', '.join(sorted(IMAGE_SUFFIXES))} files, flat or in subfolders)"
        )
    labels = None
    if with_labels:
        classes = classes or sorted(p.name for p in folder.iterdir() if p.is_dir())
        index = {c: i for i, c in enumerate(classes)}
        labels = []
        for f in files:
            top = f.relative_to(folder).parts[0]
            if top not in index:
                raise WatermarkOODError(f"{f}: images must lie in class subfolders {folder}/<class>/")
            labels.append(index[top])
    return (options or DataOptions()).folder_set(files, labels if labels is not None else [-1] * len(files),
                                                 name or folder.name, size, channels, training)


def _test_folder(root: Path) -> Path | None:
    """``test/`` or, in ImageNet's layout, ``val/``."""
    for name in ("test", "val"):
        if (root / name).is_dir():
            return root / name
    return None


def load_imagefolder_splits(root: str | Path, size: int | None = None, channels: int = 3,
                            options: DataOptions | None = None) -> tuple[ImageSet, ImageSet]:
    root = Path(root)
    test_dir = _test_folder(root)
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not classes:
        raise WatermarkOODError(f"{root}/train: no class subfolders (expected train/<class>/*.png)")
    test_classes = sorted(p.name for p in test_dir.iterdir() if p.is_dir())
    if set(test_classes) - set(classes):
        raise WatermarkOODError(f"{test_dir} has classes not in train: {sorted(set(test_classes) - set(classes))}")
    train = load_image_folder(root / "train", size, channels, f"{root.name}-train", True, classes, options, True)
    test = load_image_folder(test_dir, size, channels, f"{root.name}-{test_dir.name}", True, classes, options)
    train.class_names = test.class_names = classes
    return train, test


# ------------------------------------------------------------------------ SVHN
def load_svhn_mat(path: str | Path, name: str | None = None) -> ImageSet:
    """SVHN's ``*_32x32.mat``: ``X`` (32, 32, 3, N) uint8 and ``y`` (N, 1) with 10 meaning digit 0."""

    path = Path(path)
    if not path.is_file():
        raise WatermarkOODError(f"{path}: SVHN file not found (expected test_32x32.mat with X and y)")
    try:
        mat = loadmat(path)
    except Exception as error:  # noqa: BLE001 - scipy raises many types on damaged files
        raise WatermarkOODError(f"{path}: not a readable MATLAB file ({describe(error)})") from None
    if "X" not in mat:
        raise WatermarkOODError(f"{path}: no 'X' array (expected SVHN's X of shape 32x32x3xN)")
    x = mat["X"]
    if x.ndim != 4 or x.shape[2] != 3 or x.dtype != np.uint8:
        raise WatermarkOODError(f"{path}: 'X' must be uint8 32x32x3xN, got {x.dtype} {x.shape}")
    images = images_from_array(np.ascontiguousarray(x.transpose(3, 0, 1, 2)), str(path))
    return ImageSet(images, torch.full((len(images),), -1), name or path.stem)


# -------------------------------------------------------------------- dispatch
def load_id_data(path: str | Path, image_size: int | None = None, channels: int = 3,
                 options: DataOptions | None = None) -> tuple[ImageSet, ImageSet]:
    """(train, test) from any supported ID layout; a clear error lists the layouts otherwise.

    Image folders follow ``options`` (in memory or streamed); array layouts (npz, CIFAR) are always in memory.
    """
    options = options or DataOptions()
    path = Path(path)
    if not path.exists():
        raise WatermarkOODError(f"{path}: ID data not found; expected {ID_LAYOUTS}")
    if path.is_dir():
        if (path / "train.npz").exists() or (path / "test.npz").exists():
            train = load_npz(path / "train.npz", f"{path.name}-train", require_labels=True)
            test = load_npz(path / "test.npz", f"{path.name}-test", require_labels=True)
            return _check_id_pair(train, test)
        if _cifar_folder(path) is not None:
            return _check_id_pair(*load_cifar(path))
        if (path / "train").is_dir() and _test_folder(path) is not None:
            return _check_id_pair(*load_imagefolder_splits(path, image_size, channels, options))
        if idx_folder(path) is not None:
            return _check_id_pair(*load_idx_splits(path, channels))
    raise WatermarkOODError(f"{path}: not a recognised ID data layout; expected {ID_LAYOUTS}")


def _check_id_pair(train: ImageSet, test: ImageSet) -> tuple[ImageSet, ImageSet]:
    if train.image_shape != test.image_shape:
        raise WatermarkOODError(f"train images are {train.image_shape} but test images are {test.image_shape}")
    if (train.labels < 0).any() or (test.labels < 0).any():
        raise WatermarkOODError(f"{train.name}: ID labels must be class indices >= 0")
    if test.labels.max() >= max(train.num_classes, 1):
        raise WatermarkOODError(f"{test.name}: label {int(test.labels.max())} is not among the training classes")
    return train, test


def _resize_set(images: ImageSet, size: int) -> ImageSet:
    """Shorter side to ``size`` then center crop, for array-based sets whose size differs."""

    x = TF.center_crop(TF.resize(images.images, size, antialias=True), [size, size])
    return ImageSet(x, images.labels, images.name)


def load_ood_data(spec: str | Path, image_shape: tuple[int, int, int], count: int = 10000, seed: int = 0,
                  options: DataOptions | None = None) -> ImageSet:
    """One OOD set, made to match ``image_shape`` (C, H, W); its name is the file or folder stem.

    A folder is read as ``options`` say (in memory, or streamed: subsampling then picks files, not images).
    """
    channels, height, width = image_shape
    options = options or DataOptions()
    text = str(spec)
    if text.startswith("synthetic:"):
        kind = text.split(":", 1)[1]
        if kind == "gaussian":
            return gaussian_set(count, image_shape, seed, name="gaussian")
        if kind == "uniform":
            return uniform_set(count, image_shape, seed, name="uniform")
        raise WatermarkOODError(f"unknown synthetic set {kind!r}; use synthetic:gaussian or synthetic:uniform")
    path = Path(spec)
    if not path.exists():
        raise WatermarkOODError(
            f"{path}: OOD data not found; expected an image folder, SVHN's test_32x32.mat, an .npz with 'x', "
            "or synthetic:gaussian / synthetic:uniform"
        )
    if path.is_dir():
        if height != width:
            raise WatermarkOODError(f"{path}: image folders are resized to square images; the model needs "
                                    f"{(height, width)}")
        ood = load_image_folder(path, height, channels, path.name, options=options)
        if isinstance(ood, FileImageSet):
            return ood
    elif path.suffix == ".mat":
        ood = load_svhn_mat(path)
    elif path.suffix == ".npz":
        ood = load_npz(path)
        ood = ImageSet(ood.images, torch.full((len(ood),), -1), ood.name)
    else:
        raise WatermarkOODError(f"{path}: unsupported OOD file type {path.suffix!r} (use a folder, .mat or .npz)")
    if ood.images.shape[1] != channels:
        if ood.images.shape[1] == 1 and channels == 3:
            ood = ImageSet(ood.images.expand(-1, 3, -1, -1).contiguous(), ood.labels, ood.name)
        else:
            raise WatermarkOODError(f"{path}: images have {ood.images.shape[1]} channels, the model needs {channels}")
    if ood.image_shape[1:] != (height, width):
        if height != width:
            raise WatermarkOODError(f"{path}: images are {ood.image_shape[1:]}, the model needs {(height, width)}")
        ood = _resize_set(ood, height)
    return ood
