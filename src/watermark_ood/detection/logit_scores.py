"""The paper's protocol scores from logits (higher = more in-distribution): a view of the one registry, holding
the entries with a ``protocol`` function; every other name gets the registry's one "unknown score" message."""

from __future__ import annotations

from typing import Callable

import torch

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.detection.functional import energy_score, max_logit_score, msp_score  # noqa: F401
from watermark_ood.detection.registry import DETECTOR_KINDS, check_name
from watermark_ood.watermark.config import OBJECTIVES

__all__ = ["SCORES", "get_score", "score_for_objective", "msp_score", "energy_score", "max_logit_score"]
SCORES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    kind.name: kind.protocol for kind in DETECTOR_KINDS.values() if kind.protocol is not None}


def get_score(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The logit function of a protocol score; other names get the registry's one "unknown score" message."""
    if name not in SCORES:
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
