"""ASH-S (activation shaping): Djurisic et al., ICLR 2023 (ASH-S on the pooled penultimate activations, not the last
feature map).

Reads the penultimate features (the input of the last linear layer) and the logits. Score (higher = more ID):
logsumexp(W a(h) + b), a(h) keeping the largest (1 - p) of the features and scaling them by exp(sum h / sum kept).
"""

from __future__ import annotations

from pytorch_ood import detector as pod

from watermark_ood.core.schema import StateSchema, Value
from watermark_ood.detection.registry import DetectorKind, Reads, register

KIND = DetectorKind("ash", Reads.FEATURES, "Djurisic et al., ICLR 2023 (ASH-S on the pooled penultimate "
                    "activations, not "
                    "the last feature map)", False, StateSchema({}, {"percentile": Value("float", 0.0, 1.0)}),
                    lambda h: pod.ASH(None, head=h.flat), "feature_maps", library="ASH")
register(KIND)
