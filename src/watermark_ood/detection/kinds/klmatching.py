"""KL matching: Hendrycks et al., ICML 2022.

Reads the logits. Score (higher = more ID): -min_c KL(softmax(z) || d_c), d_c the mean softmax of the ID images
predicted c.
"""

from __future__ import annotations

from pytorch_ood import detector as pod

from watermark_ood.core.schema import StateSchema
from watermark_ood.detection.registry import DetectorKind, Reads, register

KIND = DetectorKind("klmatching", Reads.LOGITS, "Hendrycks et al., ICML 2022", True,
                    StateSchema(per_class_tensor=("dists", ("K",))), lambda h: pod.KLMatching(None), "logits",
                    library="KLMatching")
register(KIND)
