"""WeiPer+KLD (Granz, Heurich & Landgraf, "WeiPer: OOD Detection using Weight Perturbations of Class
Projections", NeurIPS 2024), written here from the paper and its authors' public OpenOOD postprocessor; neither
pytorch-ood nor OpenOOD's release ships it.

The class projections (rows ``W_k`` of the last linear layer) are perturbed ``r`` times,
``W~_k = W_k + delta |W_k| eps / |eps|`` with ``eps ~ N(0, I)``, giving ``r K`` perturbed logits
``z~ = W~ h + b``. Each image is summarised by two histograms over ``n_bins`` bins: of the values of its
penultimate features ``h`` and of its perturbed logits ``z~`` (bins spanning the training minimum and maximum of
each). The score (higher = more in-distribution) is

    -( KL(p_train, s1(p_h)) + lambda_1 KL(q_train, s2(q_z~)) - lambda_2 mean_r MSP(z~_r) )

where KL is the symmetric Kullback-Leibler divergence, ``p_train`` / ``q_train`` the mean histograms of the ID
training images, ``s1``, ``s2`` moving averages over ``smoothing`` / ``smoothing_perturbed`` bins, and
``MSP(z~_r)`` the maximum softmax of the r-th perturbed head. Hyperparameters are the authors' function defaults
(their tuned per-dataset values were not found); the perturbations are drawn from a seeded generator and saved
with the detector, so a loaded file scores exactly as the fitted one.

    >>> head = torch.nn.Linear(8, 3)
    >>> _ = torch.manual_seed(0); train = torch.randn(200, 8).relu()
    >>> detector = WeiPer(head, repeats=4).fit_features(train, torch.zeros(200, dtype=torch.long))
    >>> detector.predict_features(train[:5]).shape   # outlier scores: higher = more OOD
    torch.Size([5])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from watermark_ood.core.randomness import generator
from watermark_ood.core.schema import fail

PERTURBATION_TAG = 0x3E1


def value_histograms(values: torch.Tensor, low: torch.Tensor, high: torch.Tensor, bins: int) -> torch.Tensor:
    """Per row, the share of its values in each of ``bins`` equal bins of [low, high] (values outside count in the
    denominator, as in the authors' code), shape N x bins. Written with a scatter so that it exports."""
    width = (high + 1e-8 - low) / bins
    index = ((values - low) / width).floor()
    inside = (index >= 0) & (index < bins)
    counts = torch.zeros_like(values[:, :1]).repeat(1, bins)  # shaped from the input: the batch stays dynamic
    counts = counts.scatter_add(1, index.clamp(0, bins - 1).long(), inside.to(values.dtype))
    return counts / values.shape[1]


def smooth(histograms: torch.Tensor, size: int) -> torch.Tensor:
    """Moving average over ``size`` bins with the edges repeated (PyTorch's "same" padding of the authors' kernel)."""
    padded = F.pad(histograms[:, None, :], ((size - 1) // 2, size - 1 - (size - 1) // 2), mode="replicate")
    return F.avg_pool1d(padded, size, stride=1)[:, 0, :]


def symmetric_kl(train: torch.Tensor, sample: torch.Tensor, eps: float) -> torch.Tensor:
    """KL(p, q) + KL(q, p) of the training histogram ``train`` (bins) and each row of ``sample`` (N x bins)."""
    p = (train + eps) / (train + eps).sum()
    q = (sample + eps) / (sample + eps).sum(dim=1, keepdim=True)
    log_ratio = q.log() - p.log()[None, :]
    return -(p[None, :] * log_ratio).sum(dim=1) + (q * log_ratio).sum(dim=1)


class WeiPer:
    """WeiPer+KLD on penultimate features; ``predict_features`` gives pytorch-ood's convention (higher = OOD)."""

    def __init__(self, head: torch.nn.Linear, repeats: int = 100, delta: float = 2.1, bins: int = 100,
                 smoothing: int = 20, smoothing_perturbed: int = 20, eps: float = 0.01, eps_perturbed: float = 0.025,
                 lambda_1: float = 1.0, lambda_2: float = 1.0, seed: int = 0) -> None:
        self.head = head
        self.repeats, self.delta, self.bins = repeats, delta, bins
        self.smoothing, self.smoothing_perturbed = smoothing, smoothing_perturbed
        self.eps, self.eps_perturbed = eps, eps_perturbed
        self.lambda_1, self.lambda_2, self.seed = lambda_1, lambda_2, seed
        self.perturbed_weight: torch.Tensor | None = None  # (r K) x D
        self.train_histogram: torch.Tensor | None = None  # bins, of the features
        self.train_histogram_perturbed: torch.Tensor | None = None  # bins, of the perturbed logits
        self.ranges: torch.Tensor | None = None  # (feature min, max, perturbed-logit min, max) of the training set

    def check_loaded(self) -> None:
        """A loaded state agrees with itself and the head (the schema checks each field alone)."""
        rows = self.repeats * self.head.out_features
        if self.perturbed_weight.shape[0] != rows:
            raise fail("tensor perturbed_weight", f"{rows} rows (repeats x classes)", self.perturbed_weight.shape[0])
        for name in ("train_histogram", "train_histogram_perturbed"):
            if getattr(self, name).shape[0] != self.bins:
                raise fail(f"tensor {name}", f"{self.bins} bins", getattr(self, name).shape[0])
        if self.smoothing > self.bins or self.smoothing_perturbed > self.bins:
            raise fail("score_state.smoothing", f"at most {self.bins} bins",
                       max(self.smoothing, self.smoothing_perturbed))

    def perturbed_logits(self, features: torch.Tensor) -> torch.Tensor:
        bias = self.head.bias.detach().float().repeat(self.repeats)
        return features @ self.perturbed_weight.T + bias

    def fit_features(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> "WeiPer":
        weight = self.head.weight.detach().float().cpu()
        noise = torch.randn((self.repeats, *weight.shape), generator=generator(torch.device("cpu"), self.seed,
                                                                               PERTURBATION_TAG))
        noise = F.normalize(noise, dim=2) * self.delta * weight.norm(dim=1)[None, :, None]
        self.perturbed_weight = (weight[None] + noise).reshape(-1, weight.shape[1])
        features = features.float()
        perturbed = self.perturbed_logits(features)
        self.ranges = torch.stack([features.min(), features.max(), perturbed.min(), perturbed.max()])
        self.train_histogram = value_histograms(features, self.ranges[0], self.ranges[1], self.bins).mean(dim=0)
        self.train_histogram_perturbed = value_histograms(perturbed, self.ranges[2], self.ranges[3], self.bins).mean(0)
        return self

    def predict_features(self, features: torch.Tensor) -> torch.Tensor:
        features = features.float()
        perturbed = self.perturbed_logits(features)
        kl = symmetric_kl(self.train_histogram, smooth(value_histograms(features, self.ranges[0], self.ranges[1],
                                                                       self.bins), self.smoothing), self.eps)
        kl_perturbed = symmetric_kl(self.train_histogram_perturbed, smooth(value_histograms(
            perturbed, self.ranges[2], self.ranges[3], self.bins), self.smoothing_perturbed), self.eps_perturbed)
        msp = perturbed.reshape(-1, self.repeats, self.head.out_features).softmax(dim=2).amax(dim=2).mean(dim=1)
        return kl + self.lambda_1 * kl_perturbed - self.lambda_2 * msp
