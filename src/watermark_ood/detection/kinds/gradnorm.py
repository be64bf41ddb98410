"""GradNorm (last layer, closed form): Huang et al., NeurIPS 2021 (of the last layer's weights, in closed form: the L1
norm of softmax - 1/K times the L1 norm of the features).

Reads the penultimate features (the input of the last linear layer) and the logits. Score (higher = more ID):
||softmax(z) - 1/K||_1 ||h||_1: the L1 norm of the last layer's gradient of the cross-entropy to the uniform
distribution.
"""

from __future__ import annotations

from watermark_ood.detection import functional as F
from watermark_ood.detection.registry import DetectorKind, Reads, register

KIND = DetectorKind("gradnorm", Reads.FEATURES, "Huang et al., NeurIPS 2021 (of the last layer's weights, in closed "
                    "form: the L1 norm of softmax - 1/K times the L1 norm of the features)",
                    outlier=lambda logits, features: F.gradnorm_outlier(logits, features), library="GradNorm")
register(KIND)
