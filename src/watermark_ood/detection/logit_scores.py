"""OOD scores from logits. Convention: a higher score means "more in-distribution"."""

from __future__ import annotations

from typing import Callable

import torch

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.watermark.config import OBJECTIVES


def msp_score(logits: torch.Tensor) -> torch.Tensor:
    """Maximum softmax probability (Hendrycks & Gimpel, 2017)."""
    return torch.softmax(logits.float(), dim=1).amax(dim=1)


def energy_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Negative free energy ``T * logsumexp(z / T)`` (Liu et al., 2020)."""
    return temperature * torch.logsumexp(logits.float() / temperature, dim=1)


def max_logit_score(logits: torch.Tensor) -> torch.Tensor:
    """Largest logit (Hendrycks et al., 2022)."""
    return logits.float().amax(dim=1)


SCORES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "msp": msp_score,
    "energy": energy_score,
    "maxlogit": max_logit_score,
}


def get_score(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The logit function of a protocol score; other names get the registry's one "unknown score" message."""
    if name not in SCORES:
        from watermark_ood.detection.registry import check_name

        check_name(name)  # unknown everywhere: the same message as every other command
        raise WatermarkOODError(f"{name} is a detector, not one of the logit scores of the paper's protocol tables "
                                f"({', '.join(SCORES)}); evaluate it with --scores {name}")
    return SCORES[name]


def score_for_objective(objective: str) -> str:
    """The logit score each objective is trained for (features: energy, for the logit table; the feature
    detectors it is meant for are compared with ``--scores``)."""
    if objective not in OBJECTIVES:
        raise WatermarkOODError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    return "msp" if objective == "msp" else "energy"
