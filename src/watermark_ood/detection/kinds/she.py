"""Simplified Hopfield energy (SHE): Zhang et al., ICLR 2023.

Reads the penultimate features (the input of the last linear layer) and the logits. Score (higher = more ID): <h,
m_y>, the inner product of the features with the mean ID pattern of the predicted class y (from correctly classified
ID images).
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_ood import detector as pod

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.core.schema import StateSchema
from watermark_ood.detection.registry import DetectorKind, Reads, register


def pattern_for_every_output(impl: Any, features: torch.Tensor, labels: torch.Tensor) -> None:
    """SHE scores an input with the stored pattern of its predicted class: a model with outputs that no ID class
    trains (more outputs than the data has classes) would fail at scoring time, so fitting refuses it."""
    outputs = impl.head.head.out_features
    if len(impl.patterns) < outputs:
        raise WatermarkOODError(f"she scores each input with the pattern of its predicted class, and the model has "
                                f"{outputs} outputs but the ID data only {len(impl.patterns)} classes; choose another "
                                "score (mahalanobis, knn, ... keep one state per ID class)")


KIND = DetectorKind("she", Reads.FEATURES, "Zhang et al., ICLR 2023", True, StateSchema({"patterns": ("K", "D")}),
                    lambda h: pod.SHE(None, head=h.flat), after_fit=pattern_for_every_output, library="SHE")
register(KIND)
