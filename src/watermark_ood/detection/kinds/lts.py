"""Logit scaling (LTS): Djurisic et al., Machine Vision and Applications 2025 (logit scaling).

Reads the penultimate features (the input of the last linear layer) and the logits. Score (higher = more ID):
logsumexp(r z), r = exp(sum h / sum of the largest p of h).
"""

from __future__ import annotations

from pytorch_ood import detector as pod

from watermark_ood.core.schema import StateSchema, Value
from watermark_ood.detection import functional as F
from watermark_ood.detection.registry import DetectorKind, Reads, register

KIND = DetectorKind("lts", Reads.FEATURES, "Djurisic et al., Machine Vision and Applications 2025 (logit "
                    "scaling)", False,
                    StateSchema({}, {"p": Value("float", 0.0, 1.0)}), lambda h: pod.LTS(None, head=h.flat),
                    traced=lambda impl, logits, features: F.lts_outlier(features, impl.head,
                                                                        impl.head.head.in_features, impl.p),
                    library="LTS")
register(KIND)
