"""Gradients as uncertainty: Igoe et al., 2022 (gradients as a measure of uncertainty: every parameter's gradient to an
all-ones label, per image).

Reads the images: it runs the model itself with gradients. Score (higher = more ID): -sum_w ||dL/dw||_2^2 with L =
BCE(softmax(z), 1) summed over classes, per image, for every parameter w.
"""

from __future__ import annotations

from watermark_ood.detection.image_gradients import UNCERTAINTY
from watermark_ood.detection.image_scores import parameter_gradient_scores
from watermark_ood.detection.registry import GRADIENT_REFUSAL, DetectorKind, Reads, register

KIND = DetectorKind("graduncertainty", Reads.GRADIENT, "Igoe et al., 2022 (gradients as a measure of "
                    "uncertainty: every "
                    "parameter's gradient to an all-ones label, per image)", export_refusal=GRADIENT_REFUSAL,
                    library="GradUncertainty",
                    score_images=parameter_gradient_scores("GradUncertainty", UNCERTAINTY))
register(KIND)
