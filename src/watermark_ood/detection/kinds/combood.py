"""CombOOD: Rajasekaran et al., SDM 2024 (CombOOD: -sqrt(D) log r_k^2 - d_M^2, the k-th neighbour distance of the last
tapped layer's pooled features fused with the Mahalanobis distance of the extremes of each tapped layer and of the
logits, by default each stage's output; detection/combood.py).

Reads the tapped layers (by default each stage's output). Score (higher = more ID): -sqrt(D) log r_k^2 - d_M^2: the
k-th neighbour distance of the last tapped layer's pooled features fused with the Mahalanobis distance of the
extremes of every tapped layer.
"""

from __future__ import annotations

from watermark_ood.core.schema import StateSchema, Value
from watermark_ood.detection.combood import CombOOD, combood_reducer
from watermark_ood.detection.registry import DetectorKind, Reads, register

KIND = DetectorKind("combood", Reads.LAYERS, "Rajasekaran et al., SDM 2024 (CombOOD: -sqrt(D) log r_k^2 - d_M^2, the "
                    "k-th neighbour distance of the last tapped layer's pooled features fused with the Mahalanobis "
                    "distance of the extremes of each tapped layer and of the logits, by default each stage's output; "
                    "detection/combood.py)", True,
                    StateSchema({"widths": ("L",), "keep": ("X",), "scaler_mean": ("E",), "scaler_scale": ("E",),
                                 "lambdas": ("E",), "power_mean": ("E",), "power_scale": ("E",),
                                 "precision": ("E", "E"), "bank": ("N", "B")}, {"k": Value("int", 1, "N")}),
                    lambda h: CombOOD(h.widths), "structured", after_load=CombOOD.check_loaded,
                    traced=lambda impl, logits, features: impl.predict_structured(logits, features, chunk=None),
                    in_auto=False, reduce_layers=combood_reducer)  # not in the default pool: benchmarks/README
register(KIND)
