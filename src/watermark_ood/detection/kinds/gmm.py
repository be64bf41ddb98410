"""Class-conditional Gaussian mixture: one Gaussian per class with its own covariance, on the penultimate features
(pytorch-ood).

Reads the penultimate features (the input of the last linear layer) and the logits. Score (higher = more ID): log
sum_c pi_c N(h; mu_c, S_c), one Gaussian per ID class with its own covariance.
"""

from __future__ import annotations

from pytorch_ood import detector as pod

from watermark_ood.core.schema import StateSchema, Value
from watermark_ood.detection.registry import DetectorKind, Reads, register

KIND = DetectorKind("gmm", Reads.FEATURES, "one Gaussian per class with its own covariance, on the penultimate "
                    "features "
                    "(pytorch-ood)", True,
                    StateSchema({"_mu": ("C", "D"), "_precision": ("C", "D", "D"), "_log_det": ("C",),
                                 "_log_weights": ("C",)}, {"reg": Value("float", 0.0)}),
                    lambda h: pod.GMM(None), library="GMM")
register(KIND)
