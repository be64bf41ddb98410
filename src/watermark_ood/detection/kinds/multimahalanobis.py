"""Mahalanobis over layers: Lee et al., NeurIPS 2018 (Mahalanobis summed over layers: reads the spatial mean of each
tapped layer, by default each stage's output).

Reads the tapped layers (by default each stage's output). Score (higher = more ID): -sum_l min_c Mahalanobis
distance of the spatial mean of layer l.
"""

from __future__ import annotations

from watermark_ood.core.schema import StateSchema
from watermark_ood.detection.layer_mahalanobis import LayerMahalanobis
from watermark_ood.detection.registry import DetectorKind, Reads, register

KIND = DetectorKind("multimahalanobis", Reads.LAYERS, "Lee et al., NeurIPS 2018 (Mahalanobis summed over layers: reads "
                    "the spatial mean of each tapped layer, by default each stage's output)", True,
                    StateSchema({"mu": ("C", "S"), "precision": ("S", "S"), "widths": ("L",)}),
                    lambda h: LayerMahalanobis(h.widths), after_load=LayerMahalanobis.rebuild,
                    traced=lambda impl, logits, features: impl.traced_outlier(features), library="MultiMahalanobis")
register(KIND)
