"""Relative Mahalanobis distance: Ren et al., 2021 (relative Mahalanobis).

Reads the penultimate features (the input of the last linear layer) and the logits. Score (higher = more ID): -min_c
[d_c(h) - d_0(h)]: each class's Mahalanobis distance minus that of one background Gaussian fitted to all ID
features.
"""

from __future__ import annotations

from pytorch_ood import detector as pod

from watermark_ood.core.schema import StateSchema
from watermark_ood.detection.kinds.mahalanobis import GAUSSIAN
from watermark_ood.detection.registry import DetectorKind, Reads, register

KIND = DetectorKind("rmd", Reads.FEATURES, "Ren et al., 2021 (relative Mahalanobis)", True, StateSchema(
    {**GAUSSIAN, "background_mu": ("D",), "background_cov": ("D", "D"), "background_precision": ("D", "D")}),
    lambda h: pod.RMD(None), library="RMD")
register(KIND)
