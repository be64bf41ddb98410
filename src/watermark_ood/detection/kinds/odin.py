"""ODIN: Liang et al., ICLR 2018.

Reads the images: it runs the model itself with gradients. Score (higher = more ID): max_k softmax(z(x~) / T)_k on
x~ = x - eps sign(-grad_x log max softmax(z / T)), T = 1000, eps = 0.0014 (in the model's normalized input space,
per channel divided by its std).
"""

from __future__ import annotations

from watermark_ood.detection.image_scores import odin_scores
from watermark_ood.detection.registry import DetectorKind, Reads, register

ODIN_REFUSAL = ("odin cannot be exported: its input perturbation needs a gradient pass at inference, which neither "
                "TorchScript traces nor ONNX carry; use `watermark-ood predict`, or calibrate another score (see "
                "`calibrate --score auto`)")


KIND = DetectorKind("odin", Reads.GRADIENT, "Liang et al., ICLR 2018", export_refusal=ODIN_REFUSAL, library="ODIN",
                    score_images=odin_scores)
register(KIND)
