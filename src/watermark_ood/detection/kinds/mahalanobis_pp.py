"""Mahalanobis++: Mueller & Hein, ICML 2025 (Mahalanobis on L2-normalised penultimate features).

Reads the penultimate features (the input of the last linear layer) and the logits. Score (higher = more ID): -min_c
(f - mu_c)^T S^-1 (f - mu_c) with f = h / ||h||, class means mu_c and one shared covariance S of the normalised ID
training features. The norms of a classifier's features vary across classes and grow with confidence, which breaks
the shared-Gaussian assumption of the plain Mahalanobis score; on the unit sphere it holds far better (the paper:
better than Mahalanobis on 44 ImageNet models, first on ViTs). As in the authors' code (mueller-mp/maha-norm,
``MDSNPostprocessor``), only the normalisation differs from the plain score; the covariance is pytorch-ood's (a
centred sum with a 1e-6 ridge, not divided by N: the scores are N/2 times the authors', the same ranking).
"""

from __future__ import annotations

import torch
from pytorch_ood import detector as pod
from torch.nn import functional as nnf

from watermark_ood.core.schema import StateSchema
from watermark_ood.detection import functional as F
from watermark_ood.detection.kinds.mahalanobis import GAUSSIAN
from watermark_ood.detection.registry import DetectorKind, Reads, register


class NormalizedMahalanobis(pod.Mahalanobis):
    """pytorch-ood's Mahalanobis on features projected onto the unit sphere, when fitted and when scoring."""

    def fit_features(self, z: torch.Tensor, y: torch.Tensor) -> "NormalizedMahalanobis":
        return super().fit_features(nnf.normalize(z, dim=1), y)

    def predict_features(self, z: torch.Tensor) -> torch.Tensor:
        return super().predict_features(nnf.normalize(z, dim=1))


def traced_outlier(impl: NormalizedMahalanobis, logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """The same distance in torch alone (the library reads ``features.data``, which a trace freezes)."""
    return F.mahalanobis_min_distance(nnf.normalize(features, dim=1), impl.mu, impl.precision)


KIND = DetectorKind("mahalanobis-pp", Reads.FEATURES, "Mueller & Hein, ICML 2025 (Mahalanobis++: Mahalanobis on "
                    "L2-normalised penultimate features)", True, StateSchema(GAUSSIAN),
                    lambda h: NormalizedMahalanobis(None), traced=traced_outlier,
                    in_auto=False)  # not in --score auto's default pool until a pre-registered test adopts it
register(KIND)
