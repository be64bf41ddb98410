"""Maximum logit: Hendrycks et al., ICML 2022.

Reads the logits. Score (higher = more ID): max_k z_k.
"""

from __future__ import annotations

from watermark_ood.detection import functional as F
from watermark_ood.detection.builders import static_score
from watermark_ood.detection.registry import DetectorKind, Reads, register

KIND = DetectorKind("maxlogit", Reads.LOGITS, "Hendrycks et al., ICML 2022", outlier=static_score("MaxLogit"),
                    protocol=F.max_logit_score, library="MaxLogit")
register(KIND)
