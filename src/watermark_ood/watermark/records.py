"""What one epoch of a watermark fit records (loss terms, timings, validation); kept in the fit checkpoint and
in results.json, so it lives apart from the learner that writes it and the checkpoint that stores it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch

from watermark_ood.watermark.file import Watermark


@dataclass
class EpochRecord:
    """One epoch of history: the running loss (and its two parts) and how large the watermark has grown."""

    epoch: int
    loss: float
    alpha: float
    max_abs: float
    mean_abs: float
    l2: float
    seconds: float
    steps: int
    ce: float | None = None  # mean cross-entropy on ID (absent in histories written before it was recorded)
    ood_term: float | None = None  # mean beta x OOD term; loss = ce + ood_term

    def describe(self, epochs: int) -> str:
        parts = f" (cross-entropy {self.ce:.4g} + OOD term {self.ood_term:.4g})" if self.ce is not None else ""
        return (f"epoch {self.epoch}/{epochs}: loss {self.loss:.4g}{parts}, max |w| {self.max_abs:.3g}, "
                f"{self.seconds:.1f} s")

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


class ValidationFn(Protocol):
    """Scores a candidate watermark on held-out ID data; lower ``key`` is better."""

    def __call__(self, w: torch.Tensor) -> Any: ...


@dataclass
class FitResult:
    watermark: Watermark
    history: list[EpochRecord] = field(default_factory=list)
    fit_seconds: float = 0.0
    images_seen: int = 0
    resumed_from_step: int = 0
    selected_step: int | None = None
    validation: list[dict[str, Any]] = field(default_factory=list)
    skipped_images: list[str] = field(default_factory=list)  # unreadable files left out (--skip-bad-images)

    @property
    def images_per_second(self) -> float:
        return self.images_seen / self.fit_seconds if self.fit_seconds > 0 else 0.0


EpochCallback = Callable[[EpochRecord, torch.Tensor], None]
