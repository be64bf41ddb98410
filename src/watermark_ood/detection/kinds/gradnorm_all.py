"""GradNorm (every parameter): Huang et al., NeurIPS 2021 (as pytorch-ood's default computes it: the L1 norm of every
parameter's per-image gradient of the cross-entropy to uniform; gradnorm is the paper's last-layer form).

Reads the images: it runs the model itself with gradients. Score (higher = more ID): sum_w ||dL/dw||_1 with L the
cross-entropy of softmax(z) to the uniform distribution, per image, for every parameter w.
"""

from __future__ import annotations

from watermark_ood.detection.image_gradients import GRADNORM_ALL
from watermark_ood.detection.image_scores import parameter_gradient_scores
from watermark_ood.detection.registry import GRADIENT_REFUSAL, DetectorKind, Reads, register

KIND = DetectorKind("gradnorm-all", Reads.GRADIENT, "Huang et al., NeurIPS 2021 (as pytorch-ood's default computes it: "
                    "the L1 norm of every parameter's per-image gradient of the cross-entropy to uniform; gradnorm is "
                    "the paper's last-layer form)", export_refusal=GRADIENT_REFUSAL, library="GradNorm",
                    score_images=parameter_gradient_scores("GradNorm", GRADNORM_ALL))
register(KIND)
