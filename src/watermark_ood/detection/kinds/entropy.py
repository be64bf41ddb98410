"""Softmax entropy: Chan et al., ICCV 2021 (softmax entropy).

Reads the logits. Score (higher = more ID): sum_k p_k log p_k with p = softmax(z) (the negative entropy).
"""

from __future__ import annotations

from watermark_ood.detection.builders import static_score
from watermark_ood.detection.registry import DetectorKind, Reads, register

KIND = DetectorKind("entropy", Reads.LOGITS, "Chan et al., ICCV 2021 (softmax entropy)",
                    outlier=static_score("Entropy"),
                    library="Entropy")
register(KIND)
