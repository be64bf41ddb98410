"""The demo's data: real images shipped inside scikit-learn, so the demo needs no download.

ID: handwritten digits 0-5 (scikit-learn's copy of the UCI digits), upscaled to 16x16. OOD: the held-out digits
6-9 (near-OOD) and grey patches of the two photographs scikit-learn ships (natural images).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits, load_sample_images

from watermark_ood.data.images import ImageSet

ID_CLASSES = 6
SIZE = 16


def _upscale(images: np.ndarray) -> torch.Tensor:
    """(N, 8, 8) floats in [0, 1] -> (N, 1, 16, 16) uint8 by bilinear resizing."""
    x = torch.from_numpy(images).float().unsqueeze(1)
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def digits_sets(seed: int = 0) -> tuple[ImageSet, ImageSet, ImageSet]:
    """ID train, ID test (digits 0-5) and the held-out digits 6-9 as an OOD set."""

    digits = load_digits()
    images = _upscale(digits.images.astype(np.float32) / 16.0)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    known = labels < ID_CLASSES
    id_all = ImageSet(images[known], labels[known], "digits0-5")
    train, test = id_all.split(0.4, seed)
    heldout = ImageSet(images[~known], torch.full((int((~known).sum()),), -1), "digits6-9")
    return ImageSet(train.images, train.labels, "digits-train"), ImageSet(test.images, test.labels, "digits-test"), heldout


def photo_patches(count: int, seed: int) -> ImageSet:
    """Random grey 48x48 crops of scikit-learn's sample photographs, downscaled to 16x16."""

    rng = np.random.default_rng(seed)
    photos = [np.asarray(img, dtype=np.float32).mean(axis=2) for img in load_sample_images().images]
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        top = rng.integers(0, photo.shape[0] - 48)
        left = rng.integers(0, photo.shape[1] - 48)
        crops.append(photo[top:top + 48, left:left + 48])
    x = torch.from_numpy(np.stack(crops)).unsqueeze(1) / 255.0
    x = F.interpolate(x, size=(SIZE, SIZE), mode="area")
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageSet(x, torch.full((count,), -1), "photo-patches")
