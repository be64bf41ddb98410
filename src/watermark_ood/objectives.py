"""The two training objectives of the paper, on ID logits and surrogate-outlier logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import FitConfig


def msp_objective(z_in: torch.Tensor, y: torch.Tensor, z_out: torch.Tensor, beta: float) -> torch.Tensor:
    """CE on ID plus beta times the cross-entropy of the outliers to the uniform distribution.

    The uniform CE of one row is ``logsumexp(z) - mean_k z_k``; it reaches its
    minimum, log K, only when all logits are equal, i.e. when max softmax is as
    low as it gets.
    """
    uniform_ce = torch.logsumexp(z_out, dim=1) - z_out.mean(dim=1)
    return F.cross_entropy(z_in, y) + beta * uniform_ce.mean()


def energy_objective(
    z_in: torch.Tensor, y: torch.Tensor, z_out: torch.Tensor, beta: float, t_in: float, t_out: float
) -> torch.Tensor:
    """CE on ID plus beta times (mean exp(T_out z_out) + mean exp(-T_in z_in)).

    Pushes outlier logits down and ID logits up, which separates the free energy.
    """
    out_term = torch.exp(t_out * z_out).mean()
    in_term = torch.exp(-t_in * z_in).mean()
    return F.cross_entropy(z_in, y) + beta * (out_term + in_term)


def objective_loss(config: FitConfig, z_in: torch.Tensor, y: torch.Tensor, z_out: torch.Tensor) -> torch.Tensor:
    """Dispatch on ``config.objective``; computed in float32 whatever the logits' dtype."""
    z_in, z_out = z_in.float(), z_out.float()
    if config.objective == "msp":
        return msp_objective(z_in, y, z_out, config.beta)
    return energy_objective(z_in, y, z_out, config.beta, config.t_in, config.t_out)
