"""Mahalanobis distance: Lee et al., NeurIPS 2018.

Reads the penultimate features (the input of the last linear layer) and the logits. Score (higher = more ID): -min_c
(h - mu_c)^T S^-1 (h - mu_c) on the penultimate features h, class means mu_c and one shared covariance S of the ID
training features.
"""

from __future__ import annotations

from pytorch_ood import detector as pod

from watermark_ood.core.schema import StateSchema
from watermark_ood.detection import functional as F
from watermark_ood.detection.registry import DetectorKind, Reads, register

GAUSSIAN = {"mu": ("C", "D"), "cov": ("D", "D"), "precision": ("D", "D")}  # ID class means, shared covariance


KIND = DetectorKind("mahalanobis", Reads.FEATURES, "Lee et al., NeurIPS 2018", True, StateSchema(GAUSSIAN),
                    lambda h: pod.Mahalanobis(None),  # the library reads ``features.data``, which a trace freezes
                    traced=lambda impl, logits, features: F.mahalanobis_min_distance(features, impl.mu, impl.precision),
                    library="Mahalanobis")
register(KIND)
