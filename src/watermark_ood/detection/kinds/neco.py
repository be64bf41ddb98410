"""NECO (neural-collapse-based OOD detection): Ammar et al., ICLR 2024.

Reads the penultimate features (the input of the last linear layer). Score (higher = more ID): ||P_d s|| / ||s|| with
s = (h - mu) / sigma the features standardised by the ID training features' mean and standard deviation (a constant
unit keeps sigma = 1, as scikit-learn's scaler does) and P_d the projection onto the d first principal directions of
the standardised ID features (centred already: the PCA's own centring, in the authors' code, removes rounding only). Neural
collapse makes a trained classifier's ID features lie close to the (K-1)-dimensional simplex spanned by its class
means, and pushes OOD features towards its orthogonal complement, so the share of a vector's norm inside that
subspace separates them. As in the authors' code (``neco`` in their release's ``utils``: a StandardScaler, a full
PCA, the ratio of norms), a convolutional network's score is the ratio alone; the authors multiply it by the max
logit for transformers only. The authors tune d on OOD validation data, which a user here does not have; d is
K - 1, the simplex's dimension (at most D - 1, at least 1).
"""

from __future__ import annotations

import torch

from watermark_ood.core.schema import StateSchema, Value
from watermark_ood.detection.builders import Head
from watermark_ood.detection.registry import DetectorKind, Reads, register


class Neco:
    """Fitted on ID features; ``predict_features`` gives pytorch-ood's convention (higher = more OOD)."""

    def __init__(self, classes: int | None, dim: int | None) -> None:
        self.d = 1 if classes is None or dim is None else max(1, min(classes - 1, dim - 1))
        self.mean = self.scale = self.components = None

    def fit_features(self, z: torch.Tensor, y: torch.Tensor | None = None) -> "Neco":
        z = z.double()
        self.mean, std = z.mean(0), z.std(0, correction=0)
        self.scale = torch.where(std < 10 * torch.finfo(torch.float64).eps, torch.ones_like(std), std)
        s = (z - self.mean) / self.scale
        values, vectors = torch.linalg.eigh(s.T @ s)
        self.components = vectors[:, values.argsort(descending=True)[: self.d]].T.contiguous()
        self.mean, self.scale, self.components = (t.float() for t in (self.mean, self.scale, self.components))
        return self

    def predict_features(self, z: torch.Tensor) -> torch.Tensor:
        s = (z.float() - self.mean) / self.scale
        inside = (s @ self.components.T).norm(dim=1)
        return -inside / s.norm(dim=1).clamp_min(1e-12)


def build_neco(head: Head) -> Neco:
    return Neco(None if head.linear is None else head.linear.out_features, head.dim)


KIND = DetectorKind("neco", Reads.FEATURES, "Ammar et al., ICLR 2024 (NECO: the share of the standardised "
                    "features' norm in their d principal directions, d = K - 1)", True,
                    StateSchema({"mean": ("D",), "scale": ("D",), "components": ("d", "D")},
                                {"d": Value("int", 1, "D")}),
                    build_neco, in_auto=False)  # not in --score auto's default pool until a pre-registered test
register(KIND)
