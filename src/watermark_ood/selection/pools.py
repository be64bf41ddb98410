"""The candidate pools of ``--score auto``: which detectors the choice ranks.

``shipped`` is the default: every registered detector but combood (which the synthetic outliers overrated on
ResNet-20) and mcd (dropout models only), chosen by the fourth pre-registered pool test (benchmarks/README)
after three earlier tests had kept the 16 detectors measured before the pool grew; a kind added since stays out
(``in_auto=False``) until a pre-registered test adopts it (mahalanobis-pp, neco). ``all`` is every registered detector
the model can run (mcd only where the model has dropout).
Named detectors may be added to either (``shipped multimahalanobis``) or given alone.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.detection.registry import AUTO_CANDIDATES, DETECTOR_KINDS, SCORE_NAMES, needs_dropout
from watermark_ood.models.layers import has_dropout

POOL_NAMES = ("shipped", "all")
DEFAULT_POOL = ("shipped",)


def candidate_pool(names: Sequence[str], model: nn.Module | None = None) -> tuple[str, ...]:
    """Expand pool names and detector names into the candidates, in registry order, each once.

    ``model``: leave out what it cannot run from ``all`` and refuse a named detector it cannot run (one line);
    None checks the names only.

    >>> candidate_pool(["shipped"]) == AUTO_CANDIDATES
    True
    >>> candidate_pool(["knn", "shipped"])[:3], "multimahalanobis" in candidate_pool(["all"])
    (('msp', 'energy', 'maxlogit'), True)
    >>> candidate_pool(["multimahalanobis", "pnml"])
    ('pnml', 'multimahalanobis')
    >>> candidate_pool(["knn+vim"])
    Traceback (most recent call last):
    ...
    watermark_ood.core.errors.WatermarkOODError: --candidates takes single detectors ... not 'knn+vim' (...)
    """
    if not names:
        raise WatermarkOODError("--candidates needs at least one name: shipped, all or detector names")
    wanted: set[str] = set()
    for name in names:
        if "+" in name:
            raise WatermarkOODError(f"--candidates takes single detectors or shipped/all, not {name!r} "
                                    "(combinations of the best are ranked anyway)")
        if name == "shipped":
            wanted.update(AUTO_CANDIDATES)
        elif name == "all":
            wanted.update(n for n in SCORE_NAMES if model is None or _runs_on(n, model))
        elif name in DETECTOR_KINDS:
            if model is not None and not _runs_on(name, model):
                raise WatermarkOODError(f"--candidates {name}: it needs dropout at test time; "
                                        f"{type(model).__name__} has no dropout layer")
            wanted.add(name)
        else:
            raise WatermarkOODError(f"--candidates: unknown name {name!r}; known: {', '.join(POOL_NAMES)}, "
                                    f"{', '.join(SCORE_NAMES)}")
    return tuple(n for n in SCORE_NAMES if n in wanted)


def _runs_on(name: str, model: nn.Module) -> bool:
    """Whether the model has what the detector needs beyond its forward pass (dropout, for sampling kinds)."""
    return not needs_dropout(name) or has_dropout(model)
