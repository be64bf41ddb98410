"""CombOOD (Rajasekaran et al., "CombOOD: A Semiparametric Approach for Detecting Out-of-distribution Data for
Image Classification", SDM 2024): a nearest-neighbour density and a Gaussian fused as one log-probability.

As the authors' code computes it (github.com/rmagesh148/combood, ``test_ood.square_log_probability``, the variant
their scripts run): with r_k(x)^2 the squared L2 distance from the L2-normalized penultimate features to their
k-th nearest ID neighbour (k = 50, D their width) and d_M(x) the Mahalanobis distance of the "extreme values"
(X-OOD: the maximum and minus the minimum of each tapped layer's map, and of the logits) after a standard scaler
and a Yeo-Johnson power transform fitted on ID data, centred at 0 with covariance Sigma + 1 * I,

    log p(x) ~ -sqrt(D) * log r_k(x)^2 - d_M(x)^2          (higher = more ID)

Where this differs from the authors' code, and why: they take the extremes of the input of every activation
module; our registered architectures call ReLU as a function (no module to hook), so the extremes are those of the
tapped layers (by default each stage's output; ``--layers`` names others, e.g. BatchNorm outputs), and extremes
that are constant on the ID fitting images (a ReLU output's minimum, 0) are left out, since a constant column has
no power transform. The penultimate features are the spatial mean of the last tapped layer (the pooled features
of the registered ResNets). The transforms are fitted with scikit-learn and applied in torch (saved as tensors).

    >>> import torch
    >>> maps = [torch.randn(40, 2, 3, 3), torch.rand(40, 3, 2, 2)]    # two tapped layers
    >>> features = torch.cat([extremes_and_mean(m) for m in maps], dim=1)
    >>> logits = torch.randn(40, 4)
    >>> score = CombOOD((2 + 2, 3 + 2), k=5).fit_structured(logits, features, torch.arange(40) % 4)
    >>> score.predict_structured(logits[:3], features[:3]).shape
    torch.Size([3])
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
from sklearn.preprocessing import PowerTransformer, StandardScaler

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.detection.functional import knn_kth_distance

K_NEIGHBOURS = 50  # the authors' (and OpenOOD's CIFAR) k
REGULARIZATION = 1.0  # added to the extremes' covariance before it is inverted (the authors' ``reg``)


def extremes_and_mean(feature: torch.Tensor) -> torch.Tensor:
    """(N, C, ...) -> (N, C + 2): the spatial mean of each channel, then the map's maximum and minimum."""
    flat = feature.detach().float().flatten(1)
    mean = feature.detach().float().flatten(2).mean(dim=2) if feature.ndim > 2 else feature.detach().float()
    return torch.cat([mean, flat.max(dim=1).values[:, None], flat.min(dim=1).values[:, None]], dim=1)


def combood_reducer(layers: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """What a tap keeps of each layer's map for CombOOD (the same for any number of layers)."""
    return extremes_and_mean


def yeo_johnson(x: torch.Tensor, lambdas: torch.Tensor) -> torch.Tensor:
    """scikit-learn's Yeo-Johnson transform, column by column, in torch (float64)."""
    x, lam = x.double(), lambdas.double()[None].expand_as(x)
    eps = torch.finfo(torch.float64).eps
    pos, neg = x.clamp(min=0), (-x).clamp(min=0)
    safe_lam = torch.where(lam.abs() < eps, torch.ones_like(lam), lam)
    safe_two = torch.where((lam - 2).abs() < eps, torch.ones_like(lam), 2 - lam)
    positive = torch.where(lam.abs() < eps, torch.log1p(pos), ((pos + 1) ** safe_lam - 1) / safe_lam)
    negative = torch.where((lam - 2).abs() < eps, -torch.log1p(neg), -((neg + 1) ** safe_two - 1) / safe_two)
    return torch.where(x >= 0, positive, negative)


class CombOOD:
    """The fused score on tapped layer statistics (:func:`extremes_and_mean` of each layer) and the logits."""

    def __init__(self, widths: Sequence[int] | None = None, k: int = K_NEIGHBOURS) -> None:
        self.widths = torch.tensor([float(w) for w in widths or ()])
        self.sizes = tuple(int(w) for w in widths or ())  # the same as Python ints (not saved): export traces them
        self.k = k
        self.keep: torch.Tensor | None = None  # which extremes are used (1.0) or constant on ID data (0.0)
        self.scaler_mean = self.scaler_scale = self.lambdas = self.power_mean = self.power_scale = None
        self.precision: torch.Tensor | None = None
        self.bank: torch.Tensor | None = None  # L2-normalized penultimate features of the ID fitting images

    def _parts(self, logits: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The extremes (N, 2 + 2L: logits' max and -min, then each layer's) and the last layer's means."""
        sizes = list(self.sizes)
        if not sizes or features.shape[1] != sum(sizes):
            raise WatermarkOODError(f"combood: features of width {features.shape[1]} do not match the tapped layers' "
                                    f"widths {sizes}")
        layers = features.float().split(sizes, dim=1)
        logits = logits.float()
        extremes = [logits.max(dim=1).values, -logits.min(dim=1).values]
        for layer in layers:
            extremes += [layer[:, -2], -layer[:, -1]]
        return torch.stack(extremes, dim=1), torch.nn.functional.normalize(layers[-1][:, :-2], dim=1)

    def fit_structured(self, logits: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> "CombOOD":

        extremes, pooled = self._parts(logits, features)
        if len(extremes) < 3:
            raise WatermarkOODError(f"combood needs at least 3 ID images to fit on, got {len(extremes)}")
        spread = extremes.double().std(dim=0)
        keep = spread > 1e-6 * (1 + extremes.double().abs().mean(dim=0))
        if not bool(keep.any()):
            raise WatermarkOODError("combood: every extreme value is constant on the ID images; tap other layers")
        x = extremes[:, keep].double().numpy()
        scaler = StandardScaler().fit(x)
        power = PowerTransformer(method="yeo-johnson", standardize=True).fit(scaler.transform(x))
        moved = power.transform(scaler.transform(x))
        covariance = torch.from_numpy(np.atleast_2d(np.cov(moved, rowvar=False)))
        self.keep = keep.float()
        self.scaler_mean, self.scaler_scale = torch.from_numpy(scaler.mean_), torch.from_numpy(scaler.scale_)
        self.lambdas = torch.from_numpy(power.lambdas_)
        self.power_mean = torch.from_numpy(power._scaler.mean_)
        self.power_scale = torch.from_numpy(power._scaler.scale_)
        self.precision = torch.linalg.inv(covariance + REGULARIZATION * torch.eye(len(covariance), dtype=torch.float64)
                                          ).contiguous()  # row-major, as a loaded file's (the same last bit)
        self.bank = pooled.contiguous()
        self.k = max(1, min(self.k, len(pooled) - 1))
        return self

    def mahalanobis_squared(self, extremes: torch.Tensor) -> torch.Tensor:
        kept = self.keep.nonzero().flatten()  # index_select, not a boolean mask: both formats trace it
        z = (extremes.index_select(1, kept).double() - self.scaler_mean) / self.scaler_scale
        t = (yeo_johnson(z, self.lambdas) - self.power_mean) / self.power_scale
        return torch.einsum("nd,de,ne->n", t, self.precision, t)

    def kth_squared_distance(self, pooled: torch.Tensor, chunk: int | None = 1024) -> torch.Tensor:
        """r_k^2 of each (normalized) row: the KNN detector's k-th distance, in chunks of a bank-wide matrix
        (``chunk=None``: in one, as export traces it, since a traced loop over the batch would fix its length)."""
        if chunk is None:
            return knn_kth_distance(pooled, self.bank, self.k) ** 2
        parts = [knn_kth_distance(pooled[s:s + chunk], self.bank, self.k) for s in range(0, len(pooled), chunk)]
        return torch.cat(parts) ** 2 if parts else torch.zeros(0)

    def predict_structured(self, logits: torch.Tensor, features: torch.Tensor,
                           chunk: int | None = 1024) -> torch.Tensor:
        """Outlier score (higher = more OOD): minus the fused log-probability."""
        if self.precision is None or self.bank is None or self.keep is None:
            raise WatermarkOODError("combood is not fitted; fit it on ID training data first")
        extremes, pooled = self._parts(logits, features)
        if pooled.shape[1] != self.bank.shape[1] or extremes.shape[1] != len(self.keep):
            raise WatermarkOODError(f"combood: features of width {pooled.shape[1]} do not match the fitted "
                                    f"{self.bank.shape[1]}")
        distance = self.kth_squared_distance(pooled, chunk).double().clamp(min=1e-12)
        log_density = -math.sqrt(self.bank.shape[1]) * torch.log(distance)
        return (-(log_density - self.mahalanobis_squared(extremes))).float()

    def check_loaded(self) -> None:
        """A loaded file's parts agree with each other (the schema checks each tensor's shape)."""
        kept = int(self.keep.sum()) if self.keep is not None else -1
        if self.precision is None or kept != len(self.precision) or kept != len(self.lambdas):
            raise WatermarkOODError(f"combood: {kept} extremes kept but a precision of {len(self.precision)}")
