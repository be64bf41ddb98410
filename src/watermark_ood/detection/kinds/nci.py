"""NCI (neural-collapse inspired): Liu et al., CVPR 2025 (neural collapse inspired).

Reads the penultimate features (the input of the last linear layer) and the logits. Score (higher = more ID): the
cosine of h - mu_G with the predicted class's weight row, plus alpha ||h||_1 (mu_G the ID features' mean).
"""

from __future__ import annotations

from pytorch_ood import detector as pod

from watermark_ood.core.schema import StateSchema, Value
from watermark_ood.detection import functional as F
from watermark_ood.detection.registry import DetectorKind, Reads, register

KIND = DetectorKind("nci", Reads.FEATURES, "Liu et al., CVPR 2025 (neural collapse inspired)", True,
                    StateSchema({"global_mean": ("D",)}, {"alpha": Value("float", 0.0)}),
                    lambda h: pod.NCI(None, head=h.need()), library="NCI",  # attribute writes in
                    traced=lambda impl, logits, features: F.nci_outlier(  # its forward pass: exported in torch
                        features, impl.head, impl.global_mean, impl.alpha))
register(KIND)
