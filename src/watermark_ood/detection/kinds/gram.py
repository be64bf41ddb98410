"""Gram-matrix deviations: Sastry & Oore, ICML 2020 (Gram-matrix deviations: reads row-summed Gram vectors of poles
1..L of each tapped layer, by default each stage's output; detection/layer_gram.py).

Reads the tapped layers (by default each stage's output). Score (higher = more ID): -sum_l sum_p dev(G_l^p(x)): how
far the row sums of each layer's Gram matrices of orders 1..P leave the [min, max] seen on ID images of the
predicted class, normalised per layer.
"""

from __future__ import annotations

from watermark_ood.core.schema import StateSchema, Value
from watermark_ood.detection.layer_gram import LayerGram, gram_reducer
from watermark_ood.detection.registry import DetectorKind, Reads, register

KIND = DetectorKind("gram", Reads.LAYERS, "Sastry & Oore, ICML 2020 (Gram-matrix deviations: reads row-summed Gram "
                    "vectors of poles 1..L of each tapped layer, by default each stage's output; "
                    "detection/layer_gram.py)",
                    True, StateSchema({"feature_min": ("C", "S"), "feature_max": ("C", "S"), "layer_norm": ("L",),
                                       "widths": ("L",)}, {"seed": Value("int", 0)}),
                    lambda h: LayerGram(h.widths), "structured", library="Gram", reduce_layers=gram_reducer)
register(KIND)
