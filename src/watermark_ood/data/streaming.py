"""Images read from disk batch by batch, for ImageFolder / ImageNet layouts of any size.

:class:`FileImageSet` is the on-disk twin of :class:`data.ImageSet`: the same interface (``len``,
``labels``, ``name``, ``image_shape``, ``subset`` / ``sample`` / ``split``, ``batches``), but an image is
decoded only when a batch needs it (in DataLoader workers, with PIL and torchvision's transforms, as
torchvision's ImageFolder does), so memory does not grow with the set. Everything random about a batch
derives from (seed, epoch, step, position), never from the worker that decoded it: the same batches come
out with 0 or 8 workers, after a resume, and under torchrun, where each rank decodes only its own slice of
every global batch.

A file that cannot be decoded stops the run with its path; with ``skip_bad=True`` it is left out of its
batch, said once on stderr (one line) and recorded in ``skipped``. What reading changed in readable files
(greyscale to RGB, resized) is counted in ``adapted``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2.functional import pil_to_tensor

from watermark_ood.core.errors import WatermarkOODError, describe
from watermark_ood.core.progress import say
from watermark_ood.data.images import ImageSet, sample_indices, split_indices

STREAM_ABOVE_BYTES = 2 * 1024 ** 3  # decoded uint8 size above which a folder is streamed instead of loaded
SAMPLE_SEED_TAG = 0x5A3D


@dataclass(frozen=True)
class ImageTransform:
    """How a file becomes a (C, size, size) uint8 tensor.

    Evaluation (and training by default): shorter side to ``resize`` (default ``size``), then a center crop
    of ``size``, as torchvision's ImageNet weights expect with resize 256 / size 224. ``random_resized_crop``
    replaces both by torchvision's RandomResizedCrop for training. ``size`` None keeps each image as it is;
    then every image must have the first one's shape.
    """

    size: int | None = None
    resize: int | None = None
    channels: int = 3
    random_resized_crop: bool = False

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise WatermarkOODError(f"images must have 1 or 3 channels, got {self.channels}")
        if self.random_resized_crop and self.size is None:
            raise WatermarkOODError("a random resized crop needs an image size (--image-size)")

    def evaluation(self) -> "ImageTransform":
        return replace(self, random_resized_crop=False)

    def __call__(self, image, seed: int | None = None) -> torch.Tensor:
        """A PIL image -> (C, H, W) uint8, with torchvision's transforms on PIL images (as ImageFolder does)."""

        if self.size is not None:
            if self.random_resized_crop:
                with torch.random.fork_rng(devices=[]):  # the crop depends on the sample's seed only
                    torch.manual_seed(0 if seed is None else seed)
                    image = v2.RandomResizedCrop(self.size, antialias=True)(image)
            else:
                image = v2.functional.center_crop(v2.functional.resize(image, [self.resize or self.size]),
                                                  [self.size, self.size])
        return v2.functional.pil_to_tensor(image)


def open_image(path: Path, channels: int, transform: ImageTransform | None = None):
    """One file as an RGB (or grey) PIL image, read fully so that the file is closed, and what reading it changed
    for ``transform`` (None when the file already had the mode and size it is read at; see :func:`adaptation`)."""

    with Image.open(path) as image:
        note = None if transform is None else adaptation(image.mode, image.size, channels, transform)
        return image.convert("RGB" if channels == 3 else "L"), note


def adaptation(mode: str, size: tuple[int, int], channels: int, transform: ImageTransform) -> str | None:
    """What reading a file of PIL ``mode`` and ``size`` (W, H) changes, in words; None when nothing.

    >>> adaptation("L", (64, 64), 3, ImageTransform(32))
    'converted from L to RGB; resized from 64x64'
    >>> adaptation("RGB", (32, 32), 3, ImageTransform(32)) is None
    True
    """
    notes = []
    if mode != ("RGB" if channels == 3 else "L"):
        notes.append(f"converted from {mode} to {'RGB' if channels == 3 else 'L'}")
    if transform.size is not None and (transform.random_resized_crop or tuple(size) != (transform.size,) * 2):
        notes.append(f"resized from {size[0]}x{size[1]}")
    return "; ".join(notes) or None


def decode_image(path: Path, channels: int) -> torch.Tensor:
    """One file as a (C, H, W) uint8 tensor."""

    return pil_to_tensor(open_image(path, channels)[0])


class _Decoder(torch.utils.data.Dataset):
    """(file index, sample seed) -> (file index, image or None, error or None, adaptation or None); errors and
    what was adapted travel as values, so they reach the main process from any worker.

    Returning errors instead of raising keeps DataLoader's worker traceback out of the user's message.
    """

    def __init__(self, files: Sequence[Path], transform: ImageTransform) -> None:
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int]) -> tuple[int, torch.Tensor | None, str | None, str | None]:
        index, seed = item
        path = self.files[index]
        try:
            image, note = open_image(path, self.transform.channels, self.transform)
            image = self.transform(image, seed)
        except Exception as error:  # noqa: BLE001 - decoders raise many types on damaged files
            return index, None, f"{path}: not a readable image ({describe(error)})", None
        return index, image.contiguous(), None, note


def _keep_list(items: list) -> list:
    return items


class BadImage(WatermarkOODError):
    """A file in a streamed set could not be decoded (and bad images are not being skipped)."""


@dataclass
class FileImageSet:
    """Image files with int64 labels (-1 for OOD), decoded on demand; see the module docstring."""

    files: list[Path]
    labels: torch.Tensor
    name: str
    transform: ImageTransform = field(default_factory=ImageTransform)
    workers: int = 2
    skip_bad: bool = False
    skipped: list[str] = field(default_factory=list)  # shared by every subset of this set
    adapted: dict[str, int] = field(default_factory=dict)  # what reading changed ("resized from 64x64"): count of
    #                                                        files, shared by every subset (reported by predict)
    _shape: tuple[int, int, int] | None = None

    is_streaming = True
    class_names = None  # set by the ImageFolder reader

    def __post_init__(self) -> None:
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64)
        if len(self.files) == 0:
            raise WatermarkOODError(f"{self.name}: the set is empty")
        if self.labels.ndim != 1 or len(self.labels) != len(self.files):
            raise WatermarkOODError(f"{self.name}: {len(self.files)} files but labels of shape "
                                    f"{tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return len(self.files)

    # ------------------------------------------------------------------ what ImageSet also offers
    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W); with no image size, that of the first readable file."""
        if self._shape is None:
            t = self.transform
            if t.size is not None:
                self._shape = (t.channels, t.size, t.size)
            else:
                for path in self.files[:50]:
                    try:
                        self._shape = tuple(decode_image(path, t.channels).shape)  # type: ignore[assignment]
                        break
                    except Exception:  # noqa: BLE001 - a bad first file is reported when its batch is read
                        continue
                else:
                    raise WatermarkOODError(f"{self.name}: none of the first files could be decoded")
        return self._shape  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return int(self.labels.max().item()) + 1 if (self.labels >= 0).any() else 0

    def subset(self, indices: torch.Tensor | np.ndarray | Sequence[int], name: str | None = None) -> "FileImageSet":
        indices = torch.as_tensor(indices, dtype=torch.int64)
        return replace(self, files=[self.files[i] for i in indices.tolist()], labels=self.labels[indices],
                       name=name or self.name, skipped=self.skipped, adapted=self.adapted, _shape=self._shape)

    def sample(self, count: int, seed: int) -> "FileImageSet":
        """A seeded random subset of ``count`` files (the same indices ImageSet.sample picks)."""
        return self if count >= len(self) else self.subset(sample_indices(len(self), count, seed))

    def split(self, fraction: float, seed: int) -> tuple["FileImageSet", "FileImageSet"]:
        first, second = split_indices(len(self), fraction, seed)
        return self.subset(first), self.subset(second)

    # ------------------------------------------------------------------ reading
    def batches(self, batch_size: int, indices: torch.Tensor | None = None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(kept positions, uint8 pixels) for consecutive batches of ``indices`` (default: all), in order."""
        indices = torch.arange(len(self)) if indices is None else torch.as_tensor(indices, dtype=torch.int64)
        yield from self.read([[(int(i), 0) for i in indices[start:start + batch_size]]
                              for start in range(0, len(indices), batch_size)])

    def read(self, items: Sequence[list[tuple[int, int]]], pin_memory: bool = False
             ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Decode batches of (file index, sample seed) in order; yields (kept positions, pixels)."""
        if not items:
            return
        shape = self.image_shape
        decoder = _Decoder(self.files, self.transform)
        workers = min(self.workers, len(items))
        loader = torch.utils.data.DataLoader(decoder, batch_sampler=items, num_workers=workers,
                                             collate_fn=_keep_list, prefetch_factor=2 if workers else None)
        for batch in loader:
            for index, image, error, note in batch:
                if error is not None:
                    self._bad(error)
                elif tuple(image.shape) != shape:  # readable but of another size: not skippable
                    raise WatermarkOODError(f"{self.files[index]}: image is {tuple(image.shape)}, the set's images "
                                            f"are {shape}; give an image size (--image-size)")
                elif note is not None:
                    self.adapted[note] = self.adapted.get(note, 0) + 1
            kept = [p for p, (_, _, error, _) in enumerate(batch) if error is None]
            pixels = torch.stack([batch[p][1] for p in kept]) if kept else torch.zeros((0, *shape), dtype=torch.uint8)
            if pin_memory:
                pixels = pixels.pin_memory()
            yield torch.tensor(kept, dtype=torch.int64), pixels

    def _bad(self, error: str) -> None:
        if not self.skip_bad:
            raise BadImage(f"{error}; add --skip-bad-images to leave such files out")
        path = error.split(": ", 1)[0]
        if path not in self.skipped:
            self.skipped.append(path)
            say(f"skipped {error}")

    def materialize(self) -> ImageSet:
        """Decode every file into an in-memory ImageSet (bad files skipped only with ``skip_bad``)."""
        parts, keep = [], []
        order = torch.arange(len(self))
        for start, (kept, pixels) in zip(range(0, len(self), 256), self.batches(256)):
            parts.append(pixels)
            keep.append(order[start:start + 256][kept])
        rows = torch.cat(keep)
        if len(rows) == 0:
            raise WatermarkOODError(f"{self.name}: no readable images")
        return ImageSet(torch.cat(parts), self.labels[rows], self.name)

    def decoded_bytes(self) -> int:
        c, h, w = self.image_shape
        return len(self) * c * h * w


def sample_seed(seed: int, epoch: int, step: int, position: int) -> int:
    """The seed of one training sample's random crop: a function of where it sits, not of who decodes it."""
    return int(np.random.SeedSequence([SAMPLE_SEED_TAG, seed, epoch, step, position]).generate_state(1)[0])


def step_batches(source: FileImageSet, order: torch.Tensor, first: int, steps: int, batch_size: int,
                 seed: int, epoch: int, part: Callable[[torch.Tensor], slice], pin_memory: bool = False
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of training batches from ``first`` on: (kept positions within this rank's slice, pixels).

    ``part`` maps a global batch's indices to this rank's slice, so a rank decodes only its own images.
    """
    return source.read(_EpochPlan(order, first, steps, batch_size, seed, epoch, part), pin_memory)


class _EpochPlan:
    """The (file index, sample seed) lists of one epoch's steps, made lazily (ImageNet: 10k steps x 128)."""

    def __init__(self, order, first, steps, batch_size, seed, epoch, part) -> None:
        self.order, self.first, self.steps, self.batch_size = order.cpu(), first, steps, batch_size
        self.seed, self.epoch, self.part = seed, epoch, part

    def __len__(self) -> int:
        return self.steps - self.first

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.first, self.steps):
            index = self.order[step * self.batch_size: (step + 1) * self.batch_size]
            mine = self.part(index)
            offset = mine.start or 0
            yield [(int(i), sample_seed(self.seed, self.epoch, step, offset + p))
                   for p, i in enumerate(index[mine].tolist())]


def is_streaming(images: object) -> bool:
    return bool(getattr(images, "is_streaming", False))


def without_skipped(values: np.ndarray) -> np.ndarray:
    """Scores of a set less the NaN rows of files skipped as unreadable (``skip_bad``)."""
    values = np.asarray(values)
    return values[~np.isnan(values)]


def readable_rows(outputs: torch.Tensor) -> torch.Tensor:
    """Mask of the rows of logits/features that came from readable files (skipped files give all-NaN rows)."""
    return ~torch.isnan(outputs).all(dim=1)


def place_rows(batches: Sequence[tuple[torch.Tensor, torch.Tensor | None]], count: int, size: int) -> torch.Tensor:
    """Per-batch outputs (kept positions, values) of ``batches(size)`` at their rows; skipped rows stay NaN."""
    width = next((values.shape[1] for _, values in batches if values is not None), 1)
    result = torch.full((count, width), float("nan"))
    for b, (kept, values) in enumerate(batches):
        if values is not None:
            result[b * size + kept] = values
    return result
