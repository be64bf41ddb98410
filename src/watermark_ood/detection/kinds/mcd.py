"""Monte-Carlo dropout: Gal & Ghahramani, ICML 2016 (Monte-Carlo dropout: the softmax's variance over 30 passes with
dropout on; models with dropout only).

Reads the images: it runs the model itself with dropout on. Score (higher = more ID): -mean_k Var_t softmax(z_t)_k
over 30 passes with dropout on.
"""

from __future__ import annotations

from watermark_ood.detection.image_scores import mcd_scores
from watermark_ood.detection.registry import DetectorKind, Reads, register

MCD_REFUSAL = ("mcd cannot be exported: its 30 passes with random dropout masks are not one traced function; use "
               "`watermark-ood predict`, or calibrate another score")


KIND = DetectorKind("mcd", Reads.SAMPLING, "Gal & Ghahramani, ICML 2016 (Monte-Carlo dropout: the softmax's variance "
                    "over 30 passes with dropout on; models with dropout only)", export_refusal=MCD_REFUSAL,
                    library="MCD", in_auto=False, score_images=mcd_scores)  # --candidates all, with dropout
register(KIND)
