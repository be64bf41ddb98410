"""Reader for the MNIST family's idx files (MNIST, Fashion-MNIST, KMNIST, EMNIST), as torchvision lays them out.

An idx file is a big-endian header: two zero bytes, a type code (0x08 = uint8), the number of dimensions, then one
uint32 per dimension, then the raw values. Images are ``idx3`` (N x H x W), labels ``idx1`` (N). Files may be
gzipped (``.gz``, as Debian's ``dataset-fashion-mnist`` installs them). Nothing here unpickles.

A folder is recognised when it (or its ``raw/`` or ``<Name>/raw/`` subfolder, torchvision's layout) holds
``train-images-idx3-ubyte`` / ``train-labels-idx1-ubyte`` / ``t10k-images-idx3-ubyte`` / ``t10k-labels-idx1-ubyte``,
each optionally gzipped.

>>> import gzip, tempfile, numpy as np
>>> folder = Path(tempfile.mkdtemp())
>>> write_idx(folder / "t.idx", np.arange(12, dtype=np.uint8).reshape(2, 2, 3))
>>> read_idx(folder / "t.idx").shape
(2, 2, 3)
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from watermark_ood.core.errors import WatermarkOODError, describe
from watermark_ood.data.images import ImageSet

SPLIT_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
UINT8 = 0x08
EXPECTED = "idx files train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError) as error:
        raise WatermarkOODError(f"{path}: not a readable idx file ({describe(error)})") from None


def read_idx(path: str | Path, ndim: int | None = None) -> np.ndarray:
    """The uint8 array stored in an idx file; checks the magic number, the dimensions and the length."""
    path = Path(path)
    blob = _read_bytes(path)
    if len(blob) < 4:
        raise WatermarkOODError(f"{path}: {len(blob)} bytes, too short for an idx header")
    zero, dtype, dims = struct.unpack(">HBB", blob[:4])
    if zero != 0 or dtype != UINT8:
        raise WatermarkOODError(f"{path}: bad idx magic number 0x{blob[:4].hex()} (expected 0x000008 then the "
                                "number of dimensions: uint8 idx data)")
    if ndim is not None and dims != ndim:
        raise WatermarkOODError(f"{path}: idx data with {dims} dimensions, expected {ndim}")
    header = 4 + 4 * dims
    if len(blob) < header:
        raise WatermarkOODError(f"{path}: truncated idx header ({len(blob)} bytes)")
    shape = struct.unpack(f">{dims}I", blob[4:header])
    expected = int(np.prod(shape, dtype=np.int64))
    if len(blob) - header != expected:
        raise WatermarkOODError(f"{path}: header says shape {tuple(shape)} ({expected} bytes of data) but the file "
                                f"holds {len(blob) - header}")
    return np.frombuffer(blob, dtype=np.uint8, offset=header).reshape(shape)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as an idx file (gzipped when the name ends in .gz): for tests and conversions."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    blob = struct.pack(">HBB", 0, UINT8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(blob) if path.suffix == ".gz" else blob)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def idx_folder(root: str | Path) -> Path | None:
    """The folder holding the four idx files: ``root``, ``root/raw`` or ``root/<Name>/raw``; None if none does."""
    root = Path(root)
    candidates = [root, root / "raw", *sorted(p / "raw" for p in root.iterdir() if p.is_dir())] if root.is_dir() else []
    for folder in candidates:
        if all(_find(folder, stem) for pair in SPLIT_FILES.values() for stem in pair):
            return folder
    return None


def read_idx_split(folder: Path, split: str, name: str, channels: int = 1) -> ImageSet:
    """One split as an ImageSet (N, channels, H, W); grey images are repeated to 3 channels when asked."""
    image_file, label_file = (_find(folder, stem) for stem in SPLIT_FILES[split])
    images = read_idx(image_file, ndim=3)
    labels = read_idx(label_file, ndim=1)
    if len(labels) != len(images):
        raise WatermarkOODError(f"{label_file}: {len(labels)} labels for the {len(images)} images of {image_file}")
    pixels = torch.from_numpy(images.copy()).unsqueeze(1)
    if channels == 3:
        pixels = pixels.expand(-1, 3, -1, -1).contiguous()
    return ImageSet(pixels, torch.from_numpy(labels.astype(np.int64)), name)


def load_idx_splits(root: str | Path, channels: int = 1) -> tuple[ImageSet, ImageSet]:
    """(train, test) of an MNIST-family folder."""
    folder = idx_folder(root)
    if folder is None:
        raise WatermarkOODError(f"{root}: no MNIST-family layout; expected {EXPECTED} (optionally .gz) there, in "
                                "raw/ or in <Name>/raw/")
    name = Path(root).name
    return (read_idx_split(folder, "train", f"{name}-train", channels),
            read_idx_split(folder, "test", f"{name}-test", channels))
