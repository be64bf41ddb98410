"""NAC-UE (neuron activation coverage): Liu et al., ICLR 2024 (NAC-UE, neuron activation coverage: the gradient of the
softmax's KL to uniform times each neuron's activation, binned; reads each tapped layer, by default each stage's
output; detection/nac.py).

Reads the images: gradients on the tapped layers, to fit and to score. Score (higher = more ID): the mean over
tapped neurons of how often ID images put each neuron's state (its activation times the gradient of the softmax's KL
to uniform, binned) where this input's falls.
"""

from __future__ import annotations

from watermark_ood.core.schema import StateSchema, Value
from watermark_ood.detection.nac import PackedNAC
from watermark_ood.detection.registry import GRADIENT_REFUSAL, DetectorKind, Reads, register

KIND = DetectorKind("nac", Reads.COVERAGE, "Liu et al., ICLR 2024 (NAC-UE, neuron activation coverage: the gradient of "
                    "the softmax's KL to uniform times each neuron's activation, binned; reads each tapped layer, by "
                    "default each stage's output; detection/nac.py)", True,
                    StateSchema({"counts": ("S", 50), "widths": ("L",)},
                                {"m": Value("int", 50, 50), "alpha": Value("float", 0.0, low_open=True),
                                 "o_star": Value("int", 1)}),
                    lambda h: PackedNAC(h.widths), after_load=PackedNAC.rebuild, export_refusal=GRADIENT_REFUSAL,
                    library="NACUE")
register(KIND)
