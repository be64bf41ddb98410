"""Generalized entropy (GEN): Liu et al., CVPR 2023.

Reads the logits. Score (higher = more ID): -sum_k p_k^g (1 - p_k)^g over the largest probabilities, g = 0.1.
"""

from __future__ import annotations

from watermark_ood.detection import functional as F
from watermark_ood.detection.builders import static_score
from watermark_ood.detection.registry import DetectorKind, Reads, register

KIND = DetectorKind("gen", Reads.LOGITS, "Liu et al., CVPR 2023", outlier=static_score("GEN"),
                    traced=lambda impl, logits, features: F.gen_outlier(logits), library="GEN")
register(KIND)
