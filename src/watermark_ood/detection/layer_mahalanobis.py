"""Lee et al.'s Mahalanobis score summed over several layers (NeurIPS 2018), as pytorch-ood's ``MultiMahalanobis``
computes it: per tapped layer l, class means mu_lk and one shared covariance Sigma_l of the layer's spatial means
f_l(x) on ID data; outlier score sum_l alpha_l * max_k 0.5 (f_l - mu_lk)^T Sigma_l^-1 (f_l - mu_lk), alpha_l = 1.

The library keeps one Gaussian per layer in Python lists; here they are packed into fixed tensors so a detector
file holds them without pickle: ``mu`` (K x S, the layers' means side by side), ``precision`` (S x S, block
diagonal) and ``widths`` (the channels per layer, S their sum). Fitting and scoring are the library's own.

    >>> import torch
    >>> features = torch.randn(60, 5)                # two layers of 2 and 3 channels, side by side
    >>> labels = torch.arange(60) % 3
    >>> score = LayerMahalanobis((2, 3)).fit_features(features, labels)
    >>> score.mu.shape, score.precision.shape, score.predict_features(features[:4]).shape
    (torch.Size([3, 5]), torch.Size([5, 5]), torch.Size([4]))
"""

from __future__ import annotations

import itertools
from typing import Any, Sequence

import torch
from pytorch_ood.detector import MultiMahalanobis
from torch import nn

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.detection.functional import mahalanobis_min_distance


class LayerMahalanobis:
    """pytorch-ood's ``MultiMahalanobis`` on precomputed layer features, with its state in three tensors."""

    def __init__(self, widths: Sequence[int] | None = None) -> None:
        self.widths = torch.tensor([float(w) for w in widths or ()])
        self.sizes = tuple(int(w) for w in widths or ())  # the same as Python ints (not saved): export traces them
        self.mu: torch.Tensor | None = None
        self.precision: torch.Tensor | None = None
        self._library: Any = None

    def _sizes(self) -> list[int]:
        return list(self.sizes)

    def _split(self, features: torch.Tensor) -> list[torch.Tensor]:
        sizes = self._sizes()
        if not sizes or features.shape[1] != sum(sizes):
            raise WatermarkOODError(f"multimahalanobis: features of width {features.shape[1]} do not match the "
                                    f"tapped layers' channels {sizes}")
        return list(features.float().split(sizes, dim=1))

    @staticmethod
    def _new_library(count: int) -> Any:

        return MultiMahalanobis([nn.Identity() for _ in range(count)])

    def fit_features(self, features: torch.Tensor, labels: torch.Tensor) -> "LayerMahalanobis":
        library = self._new_library(len(self._sizes()))
        library.fit_structured(self._split(features), labels)
        # torch.linalg.inv returns column-major matrices; a loaded file's are row-major, and a product's kernel
        # (so its last bit) depends on the layout: the same layout here makes the file's scores exactly these
        library.precision = [p.contiguous() for p in library.precision]
        self.mu = torch.cat(library.mu, dim=1)
        self.precision = torch.block_diag(*library.precision)
        self._library = library
        return self

    def rebuild(self) -> None:
        """The library object from the packed tensors (after loading a file)."""
        if self.mu is None or self.precision is None or sum(self._sizes()) != self.mu.shape[1]:
            raise WatermarkOODError(f"multimahalanobis: the saved means do not match the layers' widths "
                                    f"{self._sizes()}")
        library = self._new_library(len(self._sizes()))
        bounds = [0, *itertools.accumulate(self._sizes())]
        spans = list(zip(bounds[:-1], bounds[1:]))
        library.mu = [self.mu[:, a:b].contiguous() for a, b in spans]
        library.precision = [self.precision[a:b, a:b].contiguous() for a, b in spans]
        library.cov = [torch.linalg.inv(p) for p in library.precision]
        self._library = library

    def traced_outlier(self, features: torch.Tensor) -> torch.Tensor:
        """The library's score in plain tensor code (export): sum over layers of min_k 0.5 d_Mk^2 (alpha_l = 1);
        the library's loop of per-class matrix products with ``.data`` and in-place writes does not export."""
        if self.mu is None or self.precision is None:
            raise WatermarkOODError("multimahalanobis is not fitted; fit it on ID training data first")
        total, start = torch.zeros_like(features[:, 0]), 0
        for size in self._sizes():
            span = slice(start, start + size)
            total = total + mahalanobis_min_distance(features[:, span].float(), self.mu[:, span],
                                                     self.precision[span, span])
            start += size
        return total

    def predict_features(self, features: torch.Tensor) -> torch.Tensor:
        if self._library is None:
            raise WatermarkOODError("multimahalanobis is not fitted; fit it on ID training data first")
        return self._library.predict_structured(self._split(features))
