"""DICE (directed sparsification): Sun & Li, ECCV 2022.

Reads the penultimate features (the input of the last linear layer) and the logits. Score (higher = more ID):
logsumexp((W * M) h + b), M keeping the largest (1 - p) of the weight-times-mean-ID-activation contributions, p =
0.7.
"""

from __future__ import annotations

from pytorch_ood import detector as pod

from watermark_ood.core.schema import StateSchema, Value
from watermark_ood.detection.registry import DetectorKind, Reads, register

KIND = DetectorKind("dice", Reads.FEATURES, "Sun & Li, ECCV 2022", True, StateSchema(
    {"weight": ("K", "D"), "bias": ("K",), "masked_w": ("K", "D"), "mean_activation": ("D",)},
    {"p": Value("float", 0.0, 1.0), "_is_fitted": Value("bool"), "threshold": Value("float")}),
    lambda h: pod.DICE(None, w=h.weight, b=h.bias, p=0.7), library="DICE")
register(KIND)
