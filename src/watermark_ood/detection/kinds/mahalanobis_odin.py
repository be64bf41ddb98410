"""Mahalanobis with input perturbation: Lee et al., NeurIPS 2018 (Mahalanobis on inputs perturbed against the distance,
ODIN-style; fitted on the penultimate features).

Reads the penultimate features to fit, the images to score (input gradients). Score (higher = more ID): the
Mahalanobis score of x~ = x - eps sign(grad_x min_c d_c(h(x))): inputs moved against the distance.
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_ood import detector as pod

from watermark_ood.core.schema import StateSchema, Value
from watermark_ood.detection.kinds.mahalanobis import GAUSSIAN
from watermark_ood.detection.registry import GRADIENT_REFUSAL, DetectorKind, Reads, register


def expose_gaussian(impl: Any, features: torch.Tensor, labels: torch.Tensor) -> None:
    """MahalanobisODIN keeps its Gaussian in an inner Mahalanobis: its tensors, where saving finds them."""
    impl.mu, impl.cov, impl.precision = impl._base.mu, impl._base.cov, impl._base.precision


def restore_gaussian(impl: Any) -> None:
    impl._base.mu, impl._base.cov, impl._base.precision = impl.mu, impl.cov, impl.precision


KIND = DetectorKind("mahalanobis-odin", Reads.PERTURBED, "Lee et al., NeurIPS 2018 (Mahalanobis on inputs perturbed "
                    "against the distance, ODIN-style; fitted on the penultimate features)", True,
                    StateSchema(GAUSSIAN, {"eps": Value("float", 0.0, 1.0, low_open=True)}),
                    lambda h: pod.MahalanobisODIN(None), after_fit=expose_gaussian, after_load=restore_gaussian,
                    export_refusal=GRADIENT_REFUSAL, library="MahalanobisODIN")
register(KIND)
