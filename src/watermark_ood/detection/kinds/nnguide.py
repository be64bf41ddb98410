"""NNGuide (nearest-neighbour guidance): Park et al., ICCV 2023 (nearest-neighbour guidance).

Reads the penultimate features (the input of the last linear layer) and the logits. Score (higher = more ID): the
energy times the mean cosine similarity of h to its k nearest confidence-scaled ID features (k = 10).
"""

from __future__ import annotations

from pytorch_ood import detector as pod

from watermark_ood.core.schema import StateSchema, Value
from watermark_ood.detection.registry import DetectorKind, Reads, register

KIND = DetectorKind("nnguide", Reads.FEATURES, "Park et al., ICCV 2023 (nearest-neighbour guidance)", True,
                    StateSchema({"_scaled_features": ("N", "D")}, {"k": Value("int", 1, "N")}),
                    lambda h: pod.NNGuide(None, head=h.flat, k=min(10, h.count or 10)), library="NNGuide")
register(KIND)
