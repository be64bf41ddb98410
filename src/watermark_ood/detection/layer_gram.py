"""Sastry & Oore's Gram-matrix deviations (ICML 2020), as pytorch-ood's ``Gram`` computes them, on statistics the
layer taps reduce each feature map to while the model runs (the maps themselves are never kept).

For tapped layer l with map F_l (C_l x HW) and pole p = 1..L: g_lp = rowsum((F_l^p)(F_l^p)^T)^(1/p), signed (C_l
values). Fitting keeps, per class, the minimum and maximum of every entry over 90% of its ID images (a seeded
split) and, per layer, the mean deviation of the other 10% (1 where there is none). The outlier score of x with
predicted class k: sum_l sum_p [relu(min - g) / |min + 1e-6| + relu(g - max) / |max + 1e-6|] / E[dev_l].

The library fits through a DataLoader and the model's layers run one after another; here the same arithmetic runs
on the tapped statistics, so any model's named layers work. State: ``feature_min`` and ``feature_max`` (K x S, the
layers' and poles' entries side by side), ``layer_norm`` (L) and ``widths`` (C_l x L per layer).

    >>> import torch
    >>> stats = gram_statistics(torch.rand(4, 3, 5, 5), poles=2)   # two poles of a 3-channel map
    >>> stats.shape
    torch.Size([4, 6])
"""

from __future__ import annotations

import itertools
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from watermark_ood.core.errors import WatermarkOODError

VALIDATION_FRACTION = 0.1  # of each class's fitting images: the expected deviation per layer (the library's)


def gram_statistics(feature: torch.Tensor, poles: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C * poles): the library's row-summed p-th order Gram vector for p = 1..poles."""
    out = []
    for p in range(1, poles + 1):
        temp = feature.detach().float() ** p
        temp = temp.reshape(temp.shape[0], temp.shape[1], -1)
        temp = torch.matmul(temp, temp.transpose(2, 1)).sum(dim=2)
        out.append(temp.sign() * temp.abs() ** (1 / p))
    return torch.cat(out, dim=1)


def gram_reducer(layers: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """What a tap keeps of each layer's map for Gram: poles 1..(number of layers), the library's default."""
    return lambda feature: gram_statistics(feature, layers)


def _deviation(g: torch.Tensor, mins: torch.Tensor, maxs: torch.Tensor) -> torch.Tensor:
    below = (F.relu(mins - g) / torch.abs(mins + 1e-6)).sum(dim=1)
    return below + (F.relu(g - maxs) / torch.abs(maxs + 1e-6)).sum(dim=1)


class LayerGram:
    """Gram deviations on tapped layer statistics (see the module docstring); ``widths`` per layer."""

    def __init__(self, widths: Sequence[int] | None = None, seed: int = 0) -> None:
        self.widths = torch.tensor([float(w) for w in widths or ()])
        self.sizes = tuple(int(w) for w in widths or ())  # the same as Python ints (not saved): export traces them
        self.feature_min: torch.Tensor | None = None
        self.feature_max: torch.Tensor | None = None
        self.layer_norm: torch.Tensor | None = None
        self.seed = seed

    def _spans(self) -> list[tuple[int, int]]:
        bounds = [0, *itertools.accumulate(self.sizes)]
        return list(zip(bounds[:-1], bounds[1:]))

    def _layer_deviation(self, g: torch.Tensor, mins: torch.Tensor, maxs: torch.Tensor) -> torch.Tensor:
        """Deviation over the poles of one layer (its width is C_l x poles, poles = number of layers)."""
        poles = len(self.sizes)
        return sum(_deviation(a, b, c) for a, b, c in zip(g.chunk(poles, 1), mins.chunk(poles, 1),
                                                           maxs.chunk(poles, 1)))

    def fit_features(self, features: torch.Tensor, labels: torch.Tensor) -> "LayerGram":
        features = features.float()
        classes = int(labels.max()) + 1 if len(labels) else 0
        generator = torch.Generator().manual_seed(self.seed)
        mins, maxs, held = [], [], []
        for c in range(classes):
            rows = features[labels == c]
            if len(rows) == 0:
                raise WatermarkOODError(f"gram: no ID images of class {c} to fit on")
            order = torch.randperm(len(rows), generator=generator)
            cut = int(VALIDATION_FRACTION * len(rows))
            fit, val = rows[order[cut:]], rows[order[:cut]]
            mins.append(fit.min(dim=0).values)
            maxs.append(fit.max(dim=0).values)
            held.append(val)
        self.feature_min, self.feature_max = torch.stack(mins), torch.stack(maxs)
        norms = []
        for a, b in self._spans():
            devs = [self._layer_deviation(val[:, a:b], self.feature_min[c, a:b][None], self.feature_max[c, a:b][None])
                    for c, val in enumerate(held) if len(val)]
            mean = torch.cat(devs).mean() if devs else torch.tensor(0.0)
            norms.append(mean if mean > 0 else torch.tensor(1.0))
        self.layer_norm = torch.stack(norms)
        return self

    def predict_structured(self, logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        if self.feature_min is None or self.feature_max is None or self.layer_norm is None:
            raise WatermarkOODError("gram is not fitted; fit it on ID training data first")
        if features.shape[1] != self.feature_min.shape[1]:
            raise WatermarkOODError(f"gram: statistics of width {features.shape[1]} do not match the fitted "
                                    f"{self.feature_min.shape[1]}")
        # the predicted class among those fitted: a model may have more outputs than the ID data has classes
        predicted = logits[:, :self.feature_min.shape[0]].argmax(dim=1)
        mins, maxs = self.feature_min[predicted], self.feature_max[predicted]
        out = torch.zeros_like(features[:, 0])
        for (a, b), norm in zip(self._spans(), self.layer_norm):
            out += self._layer_deviation(features[:, a:b].float(), mins[:, a:b], maxs[:, a:b]) / norm
        return out
