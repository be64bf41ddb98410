"""The detectors that run the model themselves instead of reading shared logits and features, and how each is
fitted and scored: odin and mcd (their own passes, nothing fitted), graduncertainty and gradnorm-all (every
parameter's per-image gradient, :mod:`.image_gradients`), mahalanobis-odin (inputs perturbed through the features),
nac (gradients on tapped layers, fitted on images). Their batches are sized by the memory their backward graph
holds (:func:`~watermark_ood.runtime.inference.gradient_batch`)."""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
from pytorch_ood import detector as pod
from pytorch_ood.detector import MCD, ODIN
from torch import nn

from watermark_ood.core.randomness import derived_seed
from watermark_ood.data.images import ImageSet
from watermark_ood.data.preprocessing import Normalization
from watermark_ood.detection.image_gradients import GradientNorm, Unsupported, per_image_norms
from watermark_ood.detection.registry import Reads
from watermark_ood.models.taps import split_at_head
from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.runtime.inference import WatermarkedModel, batched_scores, gradient_batch
from watermark_ood.watermark.file import Watermark

SCORED_ON_IMAGES = (Reads.PERTURBED, Reads.COVERAGE)  # fitted score objects whose scores need the images


class RunsModel(Protocol):
    """What these detectors read of a :class:`~watermark_ood.detection.detector.Detector`."""

    model: nn.Module
    normalization: Normalization
    watermark: Watermark | None
    execution: ExecutionConfig
    scorer: Any
    layers: tuple[str, ...] | None

    @property
    def reads(self) -> Reads: ...


def odin_scores(model: nn.Module, images: ImageSet, normalization: Normalization, watermark: Watermark | None,
                execution: ExecutionConfig, temperature: float = 1000.0, eps: float = 0.0014) -> np.ndarray:
    """ODIN (temperature scaling + input perturbation) via pytorch-ood; higher = more ID."""

    device = execution.torch_device()
    module = WatermarkedModel(model, watermark).eval().to(device)
    detector = ODIN(module, eps=eps, temperature=temperature, norm_std=list(normalization.std))
    batch = gradient_batch(execution, module, images.image_shape)
    return batched_scores(images, normalization, device, batch, lambda x, _: detector.predict(x))


def mcd_scores(model: nn.Module, images: ImageSet, normalization: Normalization, watermark: Watermark | None,
               execution: ExecutionConfig, samples: int = 30, seed: int = 0) -> np.ndarray:
    """Monte-Carlo dropout via pytorch-ood's ``MCD`` (``samples`` passes with dropout on, BatchNorm in eval mode;
    the variance of the softmax averaged over classes); higher = more ID. The dropout masks of each batch come from
    (seed, the batch's first row), so a set scores the same every time; the model is left in eval mode."""

    device = execution.torch_device()
    module = WatermarkedModel(model, watermark).eval().to(device)
    detector = MCD(module, samples=samples)

    def seeded(x: torch.Tensor, start: int) -> torch.Tensor:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(derived_seed(seed, start))
            return detector.predict(x)

    try:
        return batched_scores(images, normalization, device, execution.eval_batch_size, seeded)
    finally:
        module.eval()


def parameter_gradient_scores(library: str, norm: GradientNorm) -> Callable[..., np.ndarray]:
    """Scores (higher = more ID) of a detector built from every parameter's per-image gradient, equal to
    pytorch-ood's ``library`` class with its defaults (``GradUncertainty``; ``GradNorm``): one batched backward
    pass per batch (:func:`per_image_norms`); a model with a layer that is not rebuilt there is scored by the
    library's own class."""

    def scores(model: nn.Module, images: ImageSet, normalization: Normalization, watermark: Watermark | None,
               execution: ExecutionConfig) -> np.ndarray:
        device = execution.torch_device()
        module = WatermarkedModel(model, watermark).eval().to(device)
        reference = getattr(pod, library)(module)
        unsupported = False  # found once per model, so later batches go straight to the library

        def outlier(x: torch.Tensor, _: int) -> torch.Tensor:
            nonlocal unsupported
            if not unsupported:
                try:
                    return -per_image_norms(module, x, norm)
                except Unsupported:
                    unsupported = True
            return reference.predict(x)

        return batched_scores(images, normalization, device, gradient_batch(execution, module, images.image_shape),
                              outlier)

    scores.__name__ = f"{library.lower()}_scores"
    return scores


def perturbed_scores(model: nn.Module, images: ImageSet, normalization: Normalization, watermark: Watermark | None,
                     execution: ExecutionConfig, detector) -> np.ndarray:
    """A fitted pytorch-ood detector that perturbs its inputs through the penultimate features (MahalanobisODIN),
    scored with its own ``predict``: its encoder is the (watermarked) model up to its last linear layer; higher =
    more ID."""
    device = execution.torch_device()
    encoder = split_at_head(WatermarkedModel(model, watermark))[0].eval().to(device)
    detector._base.encoder, detector.norm_std = encoder, list(normalization.std)
    try:
        return batched_scores(images, normalization, device, gradient_batch(execution, encoder, images.image_shape),
                              lambda x, _: detector.predict(x))
    finally:
        detector._base.encoder, detector.norm_std = None, None


def _tapped(model: nn.Module, watermark: Watermark | None, execution: ExecutionConfig,
            layers: Sequence[str]) -> tuple[nn.Module, list[nn.Module], torch.device]:
    device = execution.torch_device()
    module = WatermarkedModel(model, watermark).eval().to(device)
    named = dict(model.named_modules())
    return module, [named[name] for name in layers], device


def coverage_fit(model: nn.Module, images: ImageSet, normalization: Normalization, watermark: Watermark | None,
                 execution: ExecutionConfig, detector, layers: Sequence[str]) -> None:
    """Fit a library detector that runs the model itself with gradients on the named layers (NAC-UE) on
    ``images``: its own passes over the (watermarked) model."""
    module, taps, device = _tapped(model, watermark, execution, layers)
    batch = gradient_batch(execution, module, images.image_shape)
    detector.fit_images(module, taps, NormalizedBatches(images, normalization, device, batch))


class NormalizedBatches:
    """The normalized batches of a set, made anew on each iteration: a detector that reads its data twice (NAC's
    two passes) gets it without every batch being held at once."""

    def __init__(self, images: ImageSet, normalization: Normalization, device: torch.device, batch: int) -> None:
        self.images, self.normalization, self.device, self.batch = images, normalization, device, batch

    def __iter__(self):
        return (self.normalization(pixels.to(self.device)) for _, pixels in self.images.batches(self.batch)
                if len(pixels))


def coverage_scores(model: nn.Module, images: ImageSet, normalization: Normalization, watermark: Watermark | None,
                    execution: ExecutionConfig, detector, layers: Sequence[str]) -> np.ndarray:
    """The same detector's scores (higher = more ID), batch by batch."""
    module, taps, device = _tapped(model, watermark, execution, layers)
    return batched_scores(images, normalization, device, gradient_batch(execution, module, images.image_shape),
                          lambda x, _: detector.predict_images(module, taps, x))


def scores_on_images(detector: RunsModel, score_images: Callable[..., np.ndarray] | None,
                     images: ImageSet) -> np.ndarray:
    """Scores (higher = more ID) of a detector that runs the model itself: a fitted one through its score object,
    the others through their kind's ``score_images``."""
    d = detector
    if d.reads == Reads.COVERAGE:
        return coverage_scores(d.model, images, d.normalization, d.watermark, d.execution, d.scorer.impl, d.layers)
    if d.reads == Reads.PERTURBED:
        return perturbed_scores(d.model, images, d.normalization, d.watermark, d.execution, d.scorer.impl)
    return score_images(d.model, images, d.normalization, d.watermark, d.execution)


def fit_on_images(detector: RunsModel, images: ImageSet) -> None:
    """nac: the library's own passes with gradients over ``images`` (the other kinds fit on shared outputs)."""
    d = detector
    coverage_fit(d.model, images, d.normalization, d.watermark, d.execution, d.scorer.impl, d.layers)
    d.scorer.widths, d.scorer.fitted = tuple(int(w) for w in d.scorer.impl.widths.tolist()), True
