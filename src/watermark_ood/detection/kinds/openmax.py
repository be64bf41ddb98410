"""OpenMax: Bendale & Boult, CVPR 2016 (OpenMax: Weibull-revised logits, the unknown class's probability;
detection/openmax.py).

Reads the logits. Score (higher = more ID): -P(unknown): the top logits are revised by a per-class Weibull model of
the distance to the class's mean logit vector, and the mass removed forms an unknown class.
"""

from __future__ import annotations

from watermark_ood.core.schema import StateSchema, Value
from watermark_ood.detection.openmax import PackedOpenMax
from watermark_ood.detection.registry import DetectorKind, Reads, register

OPENMAX_REFUSAL = ("openmax cannot be exported yet: its Weibull CDF is scipy code (numpy), which neither "
                   "TorchScript nor ONNX trace; use `watermark-ood predict`, or calibrate another score")


KIND = DetectorKind("openmax", Reads.LOGITS, "Bendale & Boult, CVPR 2016 (OpenMax: Weibull-revised logits, the unknown "
                    "class's probability; detection/openmax.py)", True,
                    StateSchema({"centers": ("C", "K"), "weibull": ("C", 3)},
                                {"tailsize": Value("int", 1), "alpha": Value("int", 1)}),
                    lambda h: PackedOpenMax(), "logits", after_load=PackedOpenMax.rebuild,
                    export_refusal=OPENMAX_REFUSAL,
                    library="OpenMax")
register(KIND)
