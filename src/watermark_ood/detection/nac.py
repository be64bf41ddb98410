"""Neuron activation coverage (NAC-UE; Liu et al., ICLR 2024) through pytorch-ood's ``NACUE``, with its fitted
histograms in one tensor.

For each tapped layer, every neuron's z * dKL(softmax || uniform)/dz (spatial mean for feature maps) is squashed by
a sigmoid of steepness alpha and binned (M geometric bins); fitting counts the bins ID images hit, scoring takes
each neuron's coverage min(count / O*, 1), averaged over neurons and summed over layers. Both need a backward pass,
so the library object runs the model itself (fit and predict are its own); the state is ``counts`` (S x M, the
layers' neurons stacked) and ``widths`` (neurons per layer), from which loading rebuilds the library's statistics.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from pytorch_ood.detector import NACUE
from pytorch_ood.detector.nac import _LayerStats
from torch import nn

from watermark_ood.core.errors import WatermarkOODError


class PackedNAC:
    """pytorch-ood's ``NACUE`` (library defaults: 50 bins, alpha 100, O* 50) with tensor state."""

    def __init__(self, widths: Sequence[int] | None = None, m: int = 50, alpha: float = 100.0,
                 o_star: int = 50) -> None:
        self.widths = torch.tensor([float(w) for w in widths or ()])
        self.m, self.alpha, self.o_star = m, alpha, o_star
        self.counts: torch.Tensor | None = None
        self._library: Any = None

    def _new_library(self, model: nn.Module, layers: Sequence[nn.Module]) -> Any:

        return NACUE(model, layers=list(layers), m_bins=self.m, alpha=self.alpha, o_star=self.o_star)

    def fit_images(self, model: nn.Module, layers: Sequence[nn.Module], batches: Iterable[torch.Tensor]) -> None:
        """The library's two passes over ``batches`` (normalized images, iterable twice)."""
        library = self._new_library(model, layers)
        library.fit(batches)
        self.counts = torch.cat([stats.counts.float() for stats in library._stats])
        self.widths = torch.tensor([float(len(stats.counts)) for stats in library._stats])
        self._library = library

    def rebuild(self) -> None:
        """The library's statistics from ``counts`` and ``widths`` (after loading a file; the model comes later)."""

        sizes = [int(w) for w in self.widths.tolist()]
        if self.counts is None or sum(sizes) != len(self.counts) or self.counts.shape[1] != self.m:
            raise WatermarkOODError(f"nac: the saved counts do not match the layers' widths {sizes}")
        library = self._new_library(None, [nn.Identity()] * len(sizes))
        library._stats = [_LayerStats(m=self.m, o_star=self.o_star, counts=part.round().long().contiguous())
                          for part in self.counts.split(sizes)]
        library._fitted = True
        self._library = library

    def predict_images(self, model: nn.Module, layers: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
        if self._library is None:
            raise WatermarkOODError("nac is not fitted; fit it on ID training data first")
        self._library.model, self._library.layers = model, list(layers)
        try:
            return self._library.predict(x)
        finally:
            self._library.model, self._library.layers = None, []
