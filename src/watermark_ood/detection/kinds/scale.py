"""SCALE: Xu et al., ICLR 2024 (SCALE on the pooled penultimate activations, not the last feature map).

Reads the penultimate features (the input of the last linear layer) and the logits. Score (higher = more ID):
logsumexp(W s(h) + b), s(h) = h exp(sum h / sum of the largest (1 - p) of h): scaled, not pruned.
"""

from __future__ import annotations

from pytorch_ood import detector as pod

from watermark_ood.core.schema import StateSchema, Value
from watermark_ood.detection.registry import DetectorKind, Reads, register

KIND = DetectorKind("scale", Reads.FEATURES, "Xu et al., ICLR 2024 (SCALE on the pooled penultimate "
                    "activations, not the "
                    "last feature map)", False, StateSchema({}, {"percentile": Value("float", 0.0, 1.0)}),
                    lambda h: pod.SCALE(None, head=h.flat), "feature_maps", library="SCALE")
register(KIND)
