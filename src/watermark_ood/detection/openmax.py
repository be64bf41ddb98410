"""Bendale & Boult's OpenMax (CVPR 2016) as pytorch-ood computes it, with its fitted Weibull models in tensors.

Per class k: the mean logit vector mu_k of its ID training images and a Weibull fit (scipy's ``exponweib`` on the
``tailsize`` largest distances to mu_k, shifted as libMR does); scoring revises the ``alpha`` top logits by the
Weibull CDF of their distance and takes the softmax probability of the added *unknown* class as the outlier score.
The library keeps a dict of centres and a dict of Python Weibull objects; here they are two tensors, ``centers``
(K x K) and ``weibull`` (K x 3: the tail's minimum, shape c and scale), from which loading rebuilds the library's
objects, so scores are the library's own.

    >>> import torch
    >>> logits = torch.randn(200, 3) + 4 * torch.eye(3)[torch.arange(200) % 3]
    >>> score = PackedOpenMax().fit_logits(logits, torch.arange(200) % 3)
    >>> score.centers.shape, score.weibull.shape, score.predict_logits(logits[:5]).shape
    (torch.Size([3, 3]), torch.Size([3, 3]), torch.Size([5]))
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pytorch_ood.detector import OpenMax
from pytorch_ood.detector.openmax.libnotmr import LibNotMR
from pytorch_ood.detector.openmax.numpy import OpenMax as NumpyOpenMax

from watermark_ood.core.errors import WatermarkOODError


class PackedOpenMax:
    """pytorch-ood's ``OpenMax`` (library defaults: tail 25, alpha 10, Euclidean distance) with tensor state."""

    def __init__(self, tailsize: int = 25, alpha: int = 10) -> None:
        self.tailsize, self.alpha = tailsize, alpha
        self.centers: torch.Tensor | None = None
        self.weibull: torch.Tensor | None = None
        self._library: Any = None

    def fit_logits(self, logits: torch.Tensor, labels: torch.Tensor) -> "PackedOpenMax":

        classes = int(labels.max()) + 1
        if sorted(set(labels.tolist())) != list(range(classes)):
            raise WatermarkOODError(f"openmax needs ID images of every class 0..{classes - 1} to fit on")
        library = OpenMax(None, tailsize=self.tailsize, alpha=self.alpha).fit_logits(logits.float(), labels)
        inner = library._openmax
        self.centers = torch.from_numpy(np.stack([inner.centers[k] for k in range(classes)])).float()
        self.weibull = torch.tensor([[inner.distributions[k].min_val, inner.distributions[k].c,
                                      inner.distributions[k].scale] for k in range(classes)], dtype=torch.float64)
        self._library = library
        return self

    def rebuild(self) -> None:
        """The library's objects from the two tensors (after loading a file)."""

        if self.centers is None or self.weibull is None or len(self.weibull) != len(self.centers):
            raise WatermarkOODError("openmax: the saved class centres and Weibull models do not match")
        library = OpenMax(None, tailsize=self.tailsize, alpha=self.alpha)
        inner = NumpyOpenMax(tailsize=self.tailsize, alpha=self.alpha)
        classes, outputs = self.centers.shape  # the ID classes may be fewer than the model's outputs
        inner.n_dims, inner.alpha, inner.is_fitted = outputs, min(outputs, self.alpha), True
        for k in range(classes):
            inner.centers[np.int64(k)] = self.centers[k].double().numpy().astype(np.float32)
            fit = LibNotMR(tailsize=self.tailsize)
            fit.min_val, fit.c, fit.scale = (float(v) for v in self.weibull[k].tolist())
            inner.distributions[np.int64(k)] = fit
        library._openmax = inner
        self._library = library

    def predict_logits(self, logits: torch.Tensor) -> torch.Tensor:
        if self._library is None:
            raise WatermarkOODError("openmax is not fitted; fit it on ID training data first")
        return self._library.predict_logits(logits.float()).float()
