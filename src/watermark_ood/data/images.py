"""In-memory image sets and the generic readers every loader builds on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from watermark_ood.core.errors import WatermarkOODError, describe
from watermark_ood.core.fileio import what_file_is


@dataclass
class ImageSet:
    """uint8 images (N, C, H, W) with int64 labels (-1 for OOD) and a name.

    Everything the learner and the evaluator consume; loaders of every on-disk
    layout produce one of these, so the training loop never touches files.
    """

    images: torch.Tensor
    labels: torch.Tensor
    name: str = "data"

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor):
            self.images = torch.as_tensor(self.images)
        if not isinstance(self.labels, torch.Tensor):
            self.labels = torch.as_tensor(self.labels)
        if self.images.dtype != torch.uint8:
            raise WatermarkOODError(f"{self.name}: images must be uint8, got {self.images.dtype}")
        if self.images.ndim != 4:
            raise WatermarkOODError(f"{self.name}: images must be (N, C, H, W), got shape {tuple(self.images.shape)}")
        if self.labels.ndim != 1 or len(self.labels) != len(self.images):
            raise WatermarkOODError(
                f"{self.name}: {len(self.images)} images but labels of shape {tuple(self.labels.shape)}"
            )
        if len(self.images) == 0:
            raise WatermarkOODError(f"{self.name}: the set is empty")
        self.labels = self.labels.to(torch.int64)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return int(self.labels.max().item()) + 1 if (self.labels >= 0).any() else 0

    def subset(self, indices: torch.Tensor | np.ndarray, name: str | None = None) -> "ImageSet":
        indices = torch.as_tensor(indices, dtype=torch.int64)
        return ImageSet(self.images[indices], self.labels[indices], name or self.name)

    def sample(self, count: int, seed: int) -> "ImageSet":
        """A seeded random subset of ``count`` images (all of them if there are fewer)."""
        return self if count >= len(self) else self.subset(sample_indices(len(self), count, seed))

    is_streaming = False
    skipped = ()  # in-memory sets hold only readable images
    class_names = None  # names of classes 0..K-1 where the layout has them (set by the readers; not a field)

    def batches(self, batch_size: int, indices: torch.Tensor | None = None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(kept positions, uint8 pixels) of consecutive batches, as streamed sets give them (all kept here)."""
        images = self.images if indices is None else self.images[torch.as_tensor(indices, dtype=torch.int64)]
        for start in range(0, len(images), batch_size):
            pixels = images[start:start + batch_size]
            yield torch.arange(len(pixels)), pixels

    def split(self, fraction: float, seed: int) -> tuple["ImageSet", "ImageSet"]:
        """A seeded (1 - fraction, fraction) split, e.g. train / validation."""
        first, second = split_indices(len(self), fraction, seed)
        return self.subset(first), self.subset(second)


def sample_indices(n: int, count: int, seed: int) -> torch.Tensor:
    """Sorted indices of a seeded random subset of ``count`` of ``n`` items (every set samples the same way)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:count].sort().values


def split_indices(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted indices of a seeded (1 - fraction, fraction) split of ``n`` items."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cut = n - max(1, int(round(fraction * n)))
    return order[:cut].sort().values, order[cut:].sort().values


def images_from_array(array: np.ndarray, source: str) -> torch.Tensor:
    """NHWC or NCHW (or NHW for grey) uint8 array -> NCHW tensor, with checks that name the source."""
    if array.dtype != np.uint8:
        raise WatermarkOODError(f"{source}: images must be uint8 (0-255), got dtype {array.dtype}")
    if array.ndim == 3:
        array = array[:, :, :, None]
    if array.ndim != 4:
        raise WatermarkOODError(f"{source}: images must be N x H x W x C, got shape {array.shape}")
    if min(array.shape[1:]) == 0:
        raise WatermarkOODError(f"{source}: images of shape {array.shape[1:]} hold no pixels")
    if array.shape[-1] in (1, 3, 4) and array.shape[1] not in (1, 3, 4):
        array = array.transpose(0, 3, 1, 2)
    elif array.shape[1] not in (1, 3, 4):
        raise WatermarkOODError(f"{source}: cannot tell the channel axis of shape {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array))


def load_npz(path: str | Path, name: str | None = None, require_labels: bool = False) -> ImageSet:
    """A ``.npz`` with ``x`` (uint8 N x H x W x C) and optionally ``y`` (int64)."""
    path = Path(path)
    if not path.is_file():
        raise WatermarkOODError(f"{path}: file not found (expected an .npz with arrays 'x' uint8 NxHxWxC and 'y')")
    try:
        with np.load(path, allow_pickle=False) as archive:
            _check_members(path, archive.zip)
            if "x" not in archive.files:
                raise WatermarkOODError(f"{path}: no array 'x' in the archive (found: {', '.join(archive.files) or 'none'})")
            x = archive["x"]
            y = archive["y"] if "y" in archive.files else None
            names = _optional_names(archive)
    except WatermarkOODError:
        raise
    except Exception as error:  # noqa: BLE001 - damaged archives fail in many ways inside numpy/zipfile
        raise WatermarkOODError(f"{path}: not a readable .npz archive ({_npz_failure(path, error)})") from None
    images = images_from_array(x, str(path))
    if y is None:
        if require_labels:
            raise WatermarkOODError(f"{path}: labels 'y' are required for an ID set")
        labels = torch.full((len(images),), -1, dtype=torch.int64)
    else:
        if y.ndim != 1 or len(y) != len(images) or not np.issubdtype(y.dtype, np.integer):
            raise WatermarkOODError(f"{path}: 'y' must be {len(images)} integers, got {y.dtype} of shape {y.shape}")
        labels = torch.from_numpy(y.astype(np.int64))
    images = ImageSet(images, labels, name or path.stem)
    if names is not None and names.ndim == 1 and names.dtype.kind == "U":
        images.class_names = [str(n) for n in names]
    return images


def _check_members(path: Path, archive) -> None:
    """Every member an ``.npy`` array with a plain name whose own header agrees with the directory (opening a member
    compares the two names; no data is read), and as many as the archive's end record declares: a damaged central
    directory could otherwise hide or rename a member, and the labels 'y' would vanish without a word (found by the
    readers' fuzz tests)."""
    names = archive.namelist()
    for name in names:
        with archive.open(name):
            pass
    bad = [n for n in names if not n.endswith(".npy") or not n[:-4].isidentifier()]
    if bad:
        raise WatermarkOODError(f"{path}: not a readable .npz archive (member {bad[0]!r} is not a named .npy array)")
    with path.open("rb") as handle:
        handle.seek(0, 2)
        handle.seek(max(0, handle.tell() - 65557))  # the end record and its longest comment
        tail = handle.read()
    end = tail.rfind(b"PK\x05\x06")
    declared = int.from_bytes(tail[end + 10:end + 12], "little") if end >= 0 and len(tail) >= end + 12 else None
    if declared is not None and declared != 0xFFFF and declared != len(names):
        raise WatermarkOODError(f"{path}: not a readable .npz archive (its directory lists {len(names)} arrays, its "
                                f"end record {declared})")


def _optional_names(archive) -> np.ndarray | None:
    """``class_names`` when stored as plain strings; an object array is never unpickled, just ignored."""
    if "class_names" not in archive.files:
        return None
    try:
        return archive["class_names"]
    except ValueError:
        return None


def _npz_failure(path: Path, error: Exception) -> str:
    """What the file is, in words; numpy's advice to unpickle is never passed on."""

    if "pickle" in str(error):
        with path.open("rb") as handle:
            if handle.read(2) == b"PK":
                return "it holds an object array, which would need unpickling and is never read; save plain " \
                       "uint8 'x' and integer 'y' arrays"
        return f"it is {what_file_is(path)}"
    return describe(error)



def split_classes(images: ImageSet, classes: list[int]) -> tuple[ImageSet, ImageSet]:
    """(known, unknown): the images of ``classes``, relabelled 0..k-1 in the given order, and the rest as OOD.

    The open-set (near-OOD) protocol: a classifier trained on the known classes meets the others at test time.

    >>> s = ImageSet(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 2, 1]), "toy")
    >>> known, unknown = split_classes(s, [2, 1])
    >>> known.labels.tolist(), unknown.labels.tolist()
    ([1, 0, 1], [-1])
    """
    present = set(images.labels.unique().tolist())
    missing = [c for c in classes if c not in present]
    if missing or len(set(classes)) != len(classes) or not classes:
        raise WatermarkOODError(f"{images.name}: class split {classes} must name distinct classes among "
                                f"{sorted(present)}" + (f"; {missing} not found" if missing else ""))
    lookup = torch.full((int(images.labels.max()) + 1,), -1, dtype=torch.int64)
    lookup[torch.tensor(classes)] = torch.arange(len(classes))
    mapped = lookup[images.labels]
    known = mapped >= 0
    if known.all():
        raise WatermarkOODError(f"{images.name}: class split {classes} leaves no class unknown")
    return (ImageSet(images.images[known], mapped[known], f"{images.name}-known"),
            ImageSet(images.images[~known], torch.full((int((~known).sum()),), -1), f"{images.name}-unknown"))
