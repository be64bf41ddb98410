"""The training objectives on ID logits and surrogate-outlier logits: the paper's two, and a bounded one.

Each is ``CE(z_in, y) + beta * ood_term``; :func:`objective_terms` keeps the two parts apart for logs and plots.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.watermark.config import FitConfig


def msp_term(z_out: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the outliers to the uniform distribution, ``logsumexp(z) - mean_k z_k``.

    It reaches its minimum, log K, only when all logits are equal, i.e. when max softmax is as low as it gets.
    """
    return (torch.logsumexp(z_out, dim=1) - z_out.mean(dim=1)).mean()


def energy_term(z_in: torch.Tensor, z_out: torch.Tensor, t_in: float, t_out: float) -> torch.Tensor:
    """``mean exp(T_out z_out) + mean exp(-T_in z_in)``: pushes outlier logits down and ID logits up. Unbounded."""
    return torch.exp(t_out * z_out).mean() + torch.exp(-t_in * z_in).mean()


def hinge_term(z_in: torch.Tensor, z_out: torch.Tensor, m_in: float, m_out: float) -> torch.Tensor:
    """Squared hinge on logsumexp (Liu et al., "Energy-based Out-of-distribution Detection", NeurIPS 2020).

    Their loss on the energy E = -logsumexp(z) is ``(max(0, E_in - m_in))^2 + (max(0, m_out - E_out))^2``
    with E-margins m_in < m_out; in logsumexp units (``m_in = -their m_in``) that is
    ``relu(m_in - LSE(z_in))^2 + relu(LSE(z_out) - m_out)^2``. Zero once both margins hold, unlike the
    exponential energy term, which keeps growing.
    """
    lse_in, lse_out = torch.logsumexp(z_in, dim=1), torch.logsumexp(z_out, dim=1)
    return torch.relu(m_in - lse_in).square().mean() + torch.relu(lse_out - m_out).square().mean()


def anchored_term(z_in: torch.Tensor, z_out: torch.Tensor, lse_out_at_zero: torch.Tensor, m_in: float,
                  m_out: float) -> torch.Tensor:
    """The squared hinge with each outlier's margin lowered to its own score without the watermark (ours).

    ``relu(m_in - LSE(z_in))^2 + relu(LSE(z_out) - min(m_out, LSE_0(x_out)))^2``, where ``LSE_0`` is the
    outlier's logsumexp at w = 0. Liu et al.'s hinge lets an outlier already below ``m_out`` rise up to it; this
    one forbids any rise, so a watermark cannot buy ID confidence by making grey or flat inputs look more ID
    (what every watermark measured on the shared models did). Equal to :func:`hinge_term` when every outlier starts at
    or above ``m_out``.

    >>> z = torch.tensor([[2.0, 0.0]])
    >>> float(anchored_term(z, z, torch.logsumexp(z, 1), m_in=0.0, m_out=5.0))
    0.0
    """
    lse_in, lse_out = torch.logsumexp(z_in, dim=1), torch.logsumexp(z_out, dim=1)
    margin_out = lse_out_at_zero.to(lse_out.dtype).clamp(max=m_out)
    return torch.relu(m_in - lse_in).square().mean() + torch.relu(lse_out - margin_out).square().mean()


def class_mean_distance(features: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Cosine distance of each feature vector to the nearest of ``anchors`` (unit-norm ID class means).

    What feature detectors read, in one differentiable number: KNN and Mahalanobis call an input ID when its
    penultimate features lie near the ID clusters.
    """
    z = features / features.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return 1.0 - (z @ anchors.T).amax(dim=1)


def features_term(f_in: torch.Tensor, f_out: torch.Tensor, anchors: torch.Tensor, m_in: float,
                  m_out: float) -> torch.Tensor:
    """Squared hinge on feature distance: ID within ``m_in`` of its class mean, outliers beyond ``m_out``."""
    d_in, d_out = class_mean_distance(f_in, anchors), class_mean_distance(f_out, anchors)
    return torch.relu(d_in - m_in).square().mean() + torch.relu(m_out - d_out).square().mean()


def msp_objective(z_in: torch.Tensor, y: torch.Tensor, z_out: torch.Tensor, beta: float) -> torch.Tensor:
    """CE on ID plus beta times the cross-entropy of the outliers to the uniform distribution (the paper)."""
    return F.cross_entropy(z_in, y) + beta * msp_term(z_out)


def energy_objective(
    z_in: torch.Tensor, y: torch.Tensor, z_out: torch.Tensor, beta: float, t_in: float, t_out: float
) -> torch.Tensor:
    """CE on ID plus beta times (mean exp(T_out z_out) + mean exp(-T_in z_in)) (the paper)."""
    return F.cross_entropy(z_in, y) + beta * energy_term(z_in, z_out, t_in, t_out)


def hinge_objective(z_in: torch.Tensor, y: torch.Tensor, z_out: torch.Tensor, beta: float, m_in: float,
                    m_out: float) -> torch.Tensor:
    """CE on ID plus beta times the squared hinge on logsumexp (Liu et al. 2020, see :func:`hinge_term`)."""
    return F.cross_entropy(z_in, y) + beta * hinge_term(z_in, z_out, m_in, m_out)


def objective_terms(config: FitConfig, z_in: torch.Tensor, y: torch.Tensor, z_out: torch.Tensor,
                    features: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                    lse_out_at_zero: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy, beta x OOD term), whose sum is the loss; float32 whatever the logits' dtype.

    Kept apart for logs and plots: the energy preset's OOD term can be ~1e21 while the cross-entropy is ~1,
    and one summed number hides which part moves. ``features`` = (ID features, outlier features, anchors) for
    the features objective; ``lse_out_at_zero`` the outliers' logsumexp without the watermark for anchored.
    """
    z_in, z_out = z_in.float(), z_out.float()
    if config.objective == "msp":
        term = msp_term(z_out)
    elif config.objective == "hinge":
        if config.m_in is None or config.m_out is None:
            raise WatermarkOODError("the hinge objective needs margins; WatermarkLearner.fit resolves them from ID data")
        term = hinge_term(z_in, z_out, config.m_in, config.m_out)
    elif config.objective == "anchored":
        if config.m_in is None or config.m_out is None or lse_out_at_zero is None:
            raise WatermarkOODError("the anchored objective needs margins and the outliers' scores at w = 0; "
                                    "WatermarkLearner.fit provides them")
        term = anchored_term(z_in, z_out, lse_out_at_zero, config.m_in, config.m_out)
    elif config.objective == "features":
        if features is None or config.m_in is None or config.m_out is None:
            raise WatermarkOODError("the features objective needs penultimate features, class means and margins; "
                                    "WatermarkLearner.fit provides them")
        f_in, f_out, anchors = features
        term = features_term(f_in.float(), f_out.float(), anchors, config.m_in, config.m_out)
    else:
        term = energy_term(z_in, z_out, config.t_in, config.t_out)
    return F.cross_entropy(z_in, y), config.beta * term


def objective_loss(config: FitConfig, z_in: torch.Tensor, y: torch.Tensor, z_out: torch.Tensor,
                   features: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                   lse_out_at_zero: torch.Tensor | None = None) -> torch.Tensor:
    """The loss the watermark descends: cross-entropy plus the weighted OOD term."""
    ce, ood = objective_terms(config, z_in, y, z_out, features, lse_out_at_zero)
    return ce + ood


def energy_scale_note(objective: str, ood_term: float | None) -> str:
    """The one-line explanation, said once, of the energy objective's huge but expected OOD term ('' otherwise).

    >>> energy_scale_note("energy", 1.6e16)[:40]
    'note: the OOD term 1.6e+16 is expected, '
    >>> energy_scale_note("msp", 1.6e16)
    ''
    """
    if objective != "energy" or ood_term is None or not ood_term > 1e6:
        return ""
    return (f"note: the OOD term {ood_term:.2g} is expected, not a divergence: the paper's energy objective is "
            "beta * mean exp(T_out * z) over the noise images' logits z, which is astronomically large for a "
            "confident classifier; only its gradient's sign is used")
