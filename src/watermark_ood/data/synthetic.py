"""Every synthetic image the package makes, in one place: the noise OOD sets (``synthetic:gaussian`` /
``synthetic:uniform``), the learner's surrogate outliers (``mosaic``, the flat and grey rows of ``mixed``) and the
validation outliers that ``--preset auto`` and ``--score auto`` rank on.

The validation outliers are deliberately of a different kind than the Gaussian training surrogates, so that
selecting on them rewards watermarks and detectors that generalise beyond the training noise: patch-shuffled
images (local statistics kept, global structure destroyed), images rotated by 90 degrees (natural statistics,
unfamiliar semantics), low-frequency colour noise, greyscale images (colour removed) and flat colours (no
structure at all). The last two cover inputs that Gaussian noise never shows an objective: on the shared models
watermarks raised the scores of grey and flat images most (``studies/why_grey_hurts.py``), and without such kinds
neither ``--preset auto`` nor ``--score auto`` could see it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.core.randomness import generator
from watermark_ood.data.images import ImageSet
from watermark_ood.data.preprocessing import Normalization, luma
from watermark_ood.data.streaming import FileImageSet, is_streaming


def mosaic(x: torch.Tensor, rng: torch.Generator, patch: int = 8) -> torch.Tensor:
    """Surrogate outliers: each image a grid of patches drawn at random from all images of the batch.

    Patches are ``patch`` pixels wide, smaller for small images so that every mosaic has at least 2 x 2 of them.
    """
    n, c, h, w = x.shape
    if h < 2 or w < 2:
        raise WatermarkOODError(f"mosaic surrogates need images of at least 2x2 pixels, got {h}x{w}")
    patch = min(patch, h // 2, w // 2)
    gh, gw = h // patch, w // patch
    tiles = x[:, :, : gh * patch, : gw * patch].reshape(n, c, gh, patch, gw, patch).permute(0, 2, 4, 1, 3, 5)
    tiles = tiles.reshape(n * gh * gw, c, patch, patch)
    pick = torch.randint(0, len(tiles), (len(tiles),), generator=rng, device=x.device)
    out = tiles[pick].reshape(n, gh, gw, c, patch, patch).permute(0, 3, 1, 4, 2, 5).reshape(n, c, gh * patch, gw * patch)
    if (gh * patch, gw * patch) != (h, w):
        out = torch.nn.functional.pad(out, (0, w - gw * patch, 0, h - gh * patch))
    return out


def flat_and_grey(x: torch.Tensor, noise: torch.Tensor, normalization: Normalization, n: int, rows: torch.Tensor,
                  rng: torch.Generator) -> torch.Tensor:
    """'mixed' surrogates: of ``noise`` (rows of a global batch of ``n``) a quarter becomes flat colours and a
    quarter greyscale (BT.601 luma) copies of the normalized ID images ``x``, all in normalized space.

    Which row gets which kind, and the colours, are drawn for the whole global batch and then sliced, like the
    noise, so torchrun ranks and skipped images do not change any row's surrogate.
    """
    n_rows, c = x.shape[:2]
    kind = torch.randint(0, 4, (n,), generator=rng, device=x.device)[rows].view(-1, 1, 1, 1)
    colour = torch.rand((n, c, 1, 1), generator=rng, device=x.device)[rows]
    mean = torch.tensor(normalization.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(normalization.std, device=x.device).view(1, -1, 1, 1)
    grey = ((luma(x.float() * std + mean).expand(n_rows, c, *x.shape[2:]) - mean) / std).to(noise.dtype)
    flat = ((colour - mean) / std).expand_as(noise).to(noise.dtype)
    return torch.where(kind == 0, flat, torch.where(kind == 1, grey, noise))


OUTLIER_KINDS = ("patch-shuffle", "rotate90", "low-frequency-noise", "greyscale", "flat-colour")

OBJECT_DESTROYING_KINDS = ("patch-shuffle", "low-frequency-noise", "flat-colour")
# Kinds that keep natural image statistics but no single ID class, made from labelled ID images (pre-registered in
# benchmarks/README for near-OOD ranking; made only when asked for, so that the default set stays
# what it was).
CLASS_KINDS = ("class-blend", "class-mosaic")
# Object-destroying without seams: the patch-shuffled kind's seams are edges no natural image has, and
# detectors reading early layers separate them easily (combood, multimahalanobis led on it where real OOD data
# ranked them lower); a phase-scrambled image keeps each image's amplitude spectrum and has no seams. Made only when
# asked for, after the class kinds, so that every earlier set stays what it was.
STATISTIC_KINDS = ("phase-scramble",)
EXTRA_KINDS = CLASS_KINDS + STATISTIC_KINDS
# --score auto ranks on both object-destroying families at once, with seams (patch-shuffled) and without
# (phase-scrambled), since the fourth pre-registered pool test (benchmarks/README): either family alone
# overrated some detector on some model (combood on ResNet-20, lts+ash+pnml on ResNet-56).
RANKING_KINDS = ("patch-shuffle", "phase-scramble", "low-frequency-noise", "flat-colour")


def gaussian_set(count: int, shape: tuple[int, int, int], seed: int, mean: float = 127.5, std: float = 64.0,
                 name: str = "gaussian") -> ImageSet:
    """Gaussian pixel noise clipped to uint8: a synthetic OOD set."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn((count, *shape), generator=generator) * std + mean
    return ImageSet(pixels.round().clamp(0, 255).to(torch.uint8), torch.full((count,), -1), name)


def uniform_set(count: int, shape: tuple[int, int, int], seed: int, name: str = "uniform") -> ImageSet:
    """Uniform pixel noise: a synthetic OOD set."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (count, *shape), generator=generator, dtype=torch.int64)
    return ImageSet(pixels.to(torch.uint8), torch.full((count,), -1), name)


def patch_shuffle(images: torch.Tensor, grid: int, rng: torch.Generator) -> torch.Tensor:
    n, c, h, w = images.shape
    ph, pw = h // grid, w // grid
    x = images[:, :, : ph * grid, : pw * grid].reshape(n, c, grid, ph, grid, pw)
    x = x.permute(0, 2, 4, 1, 3, 5).reshape(n, grid * grid, c, ph, pw)
    order = torch.stack([torch.randperm(grid * grid, generator=rng) for _ in range(n)])
    x = x[torch.arange(n)[:, None], order]
    x = x.reshape(n, grid, grid, c, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(n, c, ph * grid, pw * grid)
    out = images.clone()
    out[:, :, : ph * grid, : pw * grid] = x
    return out


def low_frequency_noise(n: int, shape: tuple[int, int, int], rng: torch.Generator) -> torch.Tensor:
    c, h, w = shape
    coarse = torch.rand((n, c, max(2, h // 8), max(2, w // 8)), generator=rng)
    return (F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1) * 255).round().to(
        torch.uint8)


def phase_scramble(images: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Each image with its Fourier phase randomized (one random phase field per image, shared by its channels so
    that colours stay correlated): its amplitude spectrum, mean and colour statistics kept, its objects and edges
    gone, and no seams. uint8 NCHW in and out; the phase field is the phase of white noise, so the result is real.

    >>> ramp = torch.linspace(60, 190, 8).view(1, 1, 1, 8).expand(2, 3, 8, 8).round().to(torch.uint8)
    >>> y = phase_scramble(ramp, torch.Generator().manual_seed(1))
    >>> y.shape, y.dtype, bool((y.float().mean((2, 3)) - ramp.float().mean((2, 3))).abs().max() < 1.0)
    (torch.Size([2, 3, 8, 8]), torch.uint8, True)
    >>> bool((y != ramp).any()), torch.equal(y, phase_scramble(ramp, torch.Generator().manual_seed(1)))
    (True, True)
    """
    n, c, h, w = images.shape
    spectrum = torch.fft.fft2(images.double())
    noise = torch.rand((n, 1, h, w), generator=rng, dtype=torch.float64)
    phase = torch.angle(torch.fft.fft2(noise))
    phase[..., 0, 0] = 0.0  # the mean (DC) term keeps its phase: the image's mean colour stays
    scrambled = torch.fft.ifft2(torch.polar(spectrum.abs(), torch.angle(spectrum) + phase)).real
    return scrambled.round().clamp(0, 255).to(torch.uint8)


def greyscale(images: torch.Tensor) -> torch.Tensor:
    """ITU-R BT.601 luma in every channel (uint8 NCHW in and out; a single channel is returned as is)."""
    return luma(images.float()).round().clamp(0, 255).to(torch.uint8).expand_as(images).contiguous()


def flat_colour(n: int, shape: tuple[int, int, int], rng: torch.Generator) -> torch.Tensor:
    """One uniformly drawn colour per image, everywhere."""
    c, h, w = shape
    colour = torch.randint(0, 256, (n, c, 1, 1), generator=rng, dtype=torch.uint8)
    return colour.expand(n, c, h, w).contiguous()


def outlier_kind_parts(count: int, kinds: Sequence[str] = OUTLIER_KINDS) -> dict[str, np.ndarray]:
    """Which rows of ``synthesize_outliers`` (of ``count`` images of ``kinds``) are of which kind."""
    return dict(zip(kinds, np.array_split(np.arange(count), len(kinds))))


def synthesized_kinds(extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The kinds ``synthesize_outliers`` makes: ``OUTLIER_KINDS``, then any of ``EXTRA_KINDS`` asked for."""
    unknown = sorted(set(extra) - set(EXTRA_KINDS) - set(OUTLIER_KINDS))
    if unknown:
        raise ValueError(f"outlier kinds must be some of {', '.join(OUTLIER_KINDS + EXTRA_KINDS)}; got {unknown[0]}")
    return OUTLIER_KINDS + tuple(k for k in EXTRA_KINDS if k in extra)


def synthesize_outliers(source: ImageSet, seed: int, extra: Sequence[str] = ()) -> ImageSet:
    """Equal shares of the outlier kinds (``synthesized_kinds(extra)``, in that order), built from ``source``.

    Without ``extra`` the set is the one every earlier release made (the class kinds come last and draw their
    randomness after the others).
    """
    rng = generator(torch.device("cpu"), seed, 0x0D7)
    if is_streaming(source):  # a ranking sample (thousands of images): decoded once, kept in memory
        source = source.materialize()
    kinds = synthesized_kinds(extra)
    parts = list(outlier_kind_parts(len(source), kinds).values())
    images = source.images
    out = [
        patch_shuffle(images[parts[0]], 4, rng),
        torch.rot90(images[parts[1]], 1, dims=(2, 3)) if images.shape[2] == images.shape[3]
        else images[parts[1]].flip(2),
        low_frequency_noise(len(parts[2]), source.image_shape, rng),
        greyscale(images[parts[3]]),
        flat_colour(len(parts[4]), source.image_shape, rng),
    ]
    makers = {"class-blend": lambda part: class_blend(images, source.labels, len(part), rng),
              "class-mosaic": lambda part: class_mosaic(images, source.labels, len(part), rng),
              "phase-scramble": lambda part: phase_scramble(images[part], rng)}
    out += [makers[kind](part) for kind, part in zip(kinds[5:], parts[5:])]
    return ImageSet(torch.cat(out), torch.full((len(source),), -1), "synthetic-validation-outliers")


def kind_rows(count: int, kinds: Sequence[str], made: Sequence[str] = OUTLIER_KINDS) -> np.ndarray:
    """Rows of ``synthesize_outliers`` (of ``count`` images of the kinds ``made``) that are of one of ``kinds``.

    >>> kind_rows(10, ("rotate90", "flat-colour")).tolist()
    [2, 3, 8, 9]
    """
    parts = outlier_kind_parts(count, made)
    unknown = sorted(set(kinds) - set(parts))
    if unknown or not kinds:
        raise ValueError(f"outlier kinds must be some of {', '.join(made)}; got {', '.join(kinds) or 'none'}")
    return np.concatenate([parts[k] for k in made if k in kinds])


def _different_classes(labels: torch.Tensor, count: int, k: int, rng: torch.Generator) -> torch.Tensor:
    """``count`` x ``k`` image indices, each row from ``k`` different classes (as many as there are, then again)."""
    classes = labels.unique()
    if len(classes) < 2:
        raise WatermarkOODError("class-blend and class-mosaic outliers need ID images of at least two classes")
    picked = torch.rand((count, len(classes)), generator=rng).argsort(dim=1)[:, torch.arange(k) % len(classes)]
    order = labels.argsort(stable=True)
    sizes = torch.stack([(labels == c).sum() for c in classes])
    starts = torch.cumsum(sizes, 0) - sizes
    within = (torch.rand((count, k), generator=rng) * sizes[picked]).long().clamp(max=sizes[picked] - 1)
    return order[starts[picked] + within]


def class_blend(images: torch.Tensor, labels: torch.Tensor, count: int, rng: torch.Generator) -> torch.Tensor:
    """The pixel mean of two ID images of different classes: natural image statistics, no single ID class.

    >>> x = torch.stack([torch.full((1, 2, 2), v, dtype=torch.uint8) for v in (0, 100, 200)])
    >>> out = class_blend(x, torch.tensor([0, 1, 2]), 4, torch.Generator().manual_seed(0))
    >>> sorted(set(out.flatten().tolist())) <= [50, 100, 150]
    True
    """
    pair = _different_classes(labels, count, 2, rng)
    return ((images[pair[:, 0]].float() + images[pair[:, 1]].float()) / 2).round().to(torch.uint8)


def class_mosaic(images: torch.Tensor, labels: torch.Tensor, count: int, rng: torch.Generator) -> torch.Tensor:
    """A 2 x 2 mosaic of quadrants from four ID images of different classes (fewer classes repeat)."""
    four = _different_classes(labels, count, 4, rng)
    h, w = images.shape[2] // 2, images.shape[3] // 2
    out = images[four[:, 0]].clone()
    out[:, :, :h, w:] = images[four[:, 1], :, :h, w:]
    out[:, :, h:, :w] = images[four[:, 2], :, h:, :w]
    out[:, :, h:, w:] = images[four[:, 3], :, h:, w:]
    return out


def data_channel_std(images: "ImageSet | FileImageSet | torch.Tensor", normalization: Normalization,
                     limit: int = 10000) -> torch.Tensor:
    """Per-channel std of the normalized data (on at most ``limit`` images), shape (1, C, 1, 1).

    Accumulated batch by batch in float64, so a streamed set is never held in memory.
    """
    if isinstance(images, torch.Tensor):
        images = ImageSet(images, torch.full((len(images),), -1), "data")
    total, total_sq, count = 0.0, 0.0, 0
    for _, pixels in images.batches(500, torch.arange(min(limit, len(images)))):
        x = normalization(pixels).double().transpose(0, 1).flatten(1)
        total, total_sq, count = total + x.sum(1), total_sq + (x * x).sum(1), count + x.shape[1]
    mean = total / count
    variance = (total_sq - count * mean * mean) / max(1, count - 1)
    return variance.clamp_min(0).sqrt().float().view(1, -1, 1, 1)
