"""Maximum softmax probability: Hendrycks & Gimpel, ICLR 2017.

Reads the logits. Score (higher = more ID): max_k softmax(z)_k of the logits z.
"""

from __future__ import annotations

from watermark_ood.detection import functional as F
from watermark_ood.detection.builders import static_score
from watermark_ood.detection.registry import DetectorKind, Reads, register

KIND = DetectorKind("msp", Reads.LOGITS, "Hendrycks & Gimpel, ICLR 2017", outlier=static_score("MaxSoftmax"),
                    protocol=F.msp_score, library="MaxSoftmax")
register(KIND)
