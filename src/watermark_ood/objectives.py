"""The two training objectives of the paper, on ID logits and surrogate-outlier logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import FitConfig
from .errors import WatermarkOODError


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


def hinge_objective(z_in: torch.Tensor, y: torch.Tensor, z_out: torch.Tensor, beta: float, m_in: float,
                    m_out: float) -> torch.Tensor:
    """CE on ID plus beta times the squared hinge on logsumexp (Liu et al., NeurIPS 2020, eq. 6).

    Their loss on the energy E = -logsumexp(z) is ``(max(0, E_in - m_in))^2 + (max(0, m_out - E_out))^2``
    with E-margins m_in < m_out; in logsumexp units (``m_in = -their m_in``) that is
    ``relu(m_in - LSE(z_in))^2 + relu(LSE(z_out) - m_out)^2``. Bounded below by zero and flat once both
    margins are met, unlike the exponential energy objective whose outlier term keeps growing.
    """
    lse_in, lse_out = torch.logsumexp(z_in, dim=1), torch.logsumexp(z_out, dim=1)
    hinge = torch.relu(m_in - lse_in).square().mean() + torch.relu(lse_out - m_out).square().mean()
    return F.cross_entropy(z_in, y) + beta * hinge


def objective_loss(config: FitConfig, z_in: torch.Tensor, y: torch.Tensor, z_out: torch.Tensor) -> torch.Tensor:
    """Dispatch on ``config.objective``; computed in float32 whatever the logits' dtype."""
    z_in, z_out = z_in.float(), z_out.float()
    if config.objective == "msp":
        return msp_objective(z_in, y, z_out, config.beta)
    if config.objective == "hinge":
        if config.m_in is None or config.m_out is None:
            raise WatermarkOODError("the hinge objective needs margins; WatermarkLearner.fit resolves them from ID data")
        return hinge_objective(z_in, y, z_out, config.beta, config.m_in, config.m_out)
    return energy_objective(z_in, y, z_out, config.beta, config.t_in, config.t_out)
