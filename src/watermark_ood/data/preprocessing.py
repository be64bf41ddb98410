"""Input normalization: the space in which the watermark and the surrogate noise live."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from watermark_ood.core.errors import WatermarkOODError

CIFAR_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Normalization:
    """Per-channel ``(x / 255 - mean) / std`` applied to uint8 images.

    Keeping data as uint8 and normalizing per batch keeps memory at one byte a
    pixel (150 MB for CIFAR-10 instead of 600 MB).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        mean, std = tuple(float(m) for m in self.mean), tuple(float(s) for s in self.std)
        if len(mean) != len(std) or not mean:
            raise WatermarkOODError(f"mean and std must have the same non-zero length, got {len(mean)} and {len(std)}")
        if any(not s > 0 for s in std):
            raise WatermarkOODError(f"std values must be positive, got {std}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @property
    def channels(self) -> int:
        return len(self.mean)

    def check_channels(self, channels: int) -> None:
        if channels != self.channels:
            raise WatermarkOODError(
                f"images have {channels} channels but the normalization has {self.channels} "
                f"(mean {self.mean}); pass --mean/--std with {channels} values"
            )

    def __call__(self, images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """uint8 (N, C, H, W) -> normalized float."""
        self.check_channels(images.shape[1])
        shape = (1, -1, 1, 1)
        mean = torch.tensor(self.mean, dtype=dtype, device=images.device).view(shape)
        std = torch.tensor(self.std, dtype=dtype, device=images.device).view(shape)
        return (images.to(dtype) / 255.0 - mean) / std

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict) -> "Normalization":
        return cls(tuple(data["mean"]), tuple(data["std"]))


def luma(pixels: torch.Tensor) -> torch.Tensor:
    """ITU-R BT.601 luma of RGB images (float NCHW, any range) as one channel; other channel counts unchanged.

    The single definition of "greyscale" for the synthetic validation outliers and the mixed surrogates.
    """
    if pixels.shape[1] != 3:
        return pixels
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    return (pixels * weights).sum(1, keepdim=True)


CIFAR = Normalization(CIFAR_MEAN, CIFAR_STD)
IMAGENET = Normalization(IMAGENET_MEAN, IMAGENET_STD)
