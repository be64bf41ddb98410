"""Pure score functions, usable without any detector object (as pytorch-ood's ``score`` static methods).

Protocol scores (:func:`msp_score`, :func:`energy_score`, :func:`max_logit_score`) follow the paper's tables:
higher = more in-distribution. The others return pytorch-ood's *outlier* score (higher = more OOD) and exist
because the library's code cannot be traced for export; tests check each equal to the library's.

    >>> import torch
    >>> logits = torch.tensor([[4.0, 0.0], [0.1, 0.0]])
    >>> energy_score(logits).round(decimals=3)   # logsumexp: the first input is more ID
    tensor([4.0180, 0.7440])
"""

from __future__ import annotations

import torch


def msp_score(logits: torch.Tensor) -> torch.Tensor:
    """Maximum softmax probability (Hendrycks & Gimpel, 2017)."""
    return torch.softmax(logits.float(), dim=1).amax(dim=1)


def energy_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Negative free energy ``T * logsumexp(z / T)`` (Liu et al., 2020)."""
    return temperature * torch.logsumexp(logits.float() / temperature, dim=1)


def max_logit_score(logits: torch.Tensor) -> torch.Tensor:
    """Largest logit (Hendrycks et al., 2022)."""
    return logits.float().amax(dim=1)


def knn_kth_distance(features: torch.Tensor, bank: torch.Tensor, k: int, spare: int = 8) -> torch.Tensor:
    """Distance of each L2-normalized feature to its k-th nearest neighbour in ``bank`` (already normalized).

    The same quantity as pytorch-ood's KNN (scikit-learn's exact search), written in torch so that it traces:
    candidates come from one matrix product, then the ``k + spare`` nearest are measured exactly, since
    ``|z|^2 - 2 z.b + |b|^2`` loses precision for near neighbours.
    """
    z = features / features.norm(dim=1, keepdim=True).clamp(min=1e-12)
    squared = (z * z).sum(1, keepdim=True) - 2 * z @ bank.T + (bank * bank).sum(1)[None, :]
    candidates = squared.topk(min(k + spare, bank.shape[0]), dim=1, largest=False).indices
    exact = (z[:, None, :] - bank[candidates]).norm(dim=2)
    return exact.topk(k, dim=1, largest=False).values[:, -1]


def gen_outlier(logits: torch.Tensor, gamma: float = 0.1, eps: float = 1e-7) -> torch.Tensor:
    """pytorch-ood's GEN outlier score (all classes) in float64, written so that it exports exactly.

    The library clamps p to [1e-7, 1 - 1e-7]; ONNX exporters store that upper bound as float32, where it is
    1 - 1.19e-7, and for confident images ((1 - p)^0.1 at the bound) the exported score moved by ~5e-4 of its
    range. Here the bound is applied to 1 - p instead (1e-7 survives float32), which equals the library's
    clamp to ~1e-8 relative.
    """
    p = logits.double().softmax(dim=1)
    return (p.clamp(min=eps).pow(gamma) * (1 - p).clamp(min=eps).pow(gamma)).mean(dim=1)


def mahalanobis_min_distance(features: torch.Tensor, mu: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """Half the squared Mahalanobis distance to the closest class mean: pytorch-ood's Mahalanobis score."""
    centered = features[:, None, :] - mu[None, :, :]  # N x K x D
    return 0.5 * ((centered @ precision) * centered).sum(dim=2).min(dim=1).values


def gradnorm_outlier(logits: torch.Tensor, features: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """pytorch-ood's GradNorm outlier score of the last linear layer's weights, in closed form (no backward pass).

    The loss is the cross-entropy of ``softmax(z / T)`` to the uniform distribution u; its gradient with respect
    to the weights W of ``z = W h + b`` is the outer product ``(softmax(z / T) - u) / T`` x ``h``, whose L1 norm
    is the product of the two vectors' L1 norms. The library negates it (higher = more OOD).
    """
    p = (logits.double() / temperature).softmax(dim=1)
    return -((p - 1.0 / p.shape[1]).abs().sum(dim=1) / temperature) * features.double().abs().sum(dim=1)


def nci_outlier(features: torch.Tensor, head: torch.nn.Linear, global_mean: torch.Tensor,
                alpha: float = 0.0) -> torch.Tensor:
    """pytorch-ood's NCI outlier score written without its attribute writes inside the forward pass (which neither
    exporter traces): minus the projection of the centred feature on the predicted class's weight vector (the
    library's "cosine", whose weight-norm term cancels), minus ``alpha`` times the feature's L1 norm."""
    centred = features - global_mean
    weights = head.weight[head(features).argmax(dim=1)]
    score = (centred * weights).sum(dim=1) / centred.pow(2).sum(dim=1).sqrt()
    return -score - alpha * features.abs().sum(dim=1) if alpha > 0 else -score


def lts_outlier(features: torch.Tensor, head: torch.nn.Module, width: int, p: float) -> torch.Tensor:
    """pytorch-ood's LTS outlier score with its top-k count ``k = max(1, D - round(D (1 - p)))`` computed from the
    feature width ``width`` (a constant of the detector) instead of the tensor's shape, which a trace turns into
    a tensor that ``round`` refuses: minus the energy of the logits scaled by ``(sum(relu z) / top-k sum)^2``."""
    z = features.relu()
    k = max(1, width - round(width * (1 - p)))
    scale = (z.sum(dim=1) / z.topk(k, dim=1).values.sum(dim=1)).square()
    return -torch.logsumexp(head(features) * scale[:, None], dim=1)
