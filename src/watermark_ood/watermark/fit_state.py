"""The state of one ``WatermarkLearner.fit`` call, apart from the loop that advances it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from watermark_ood.data.images import ImageSet
from watermark_ood.data.streaming import FileImageSet
from watermark_ood.watermark.checkpoint import FitCheckpoint
from watermark_ood.watermark.records import EpochCallback, EpochRecord, ValidationFn
from watermark_ood.watermark.step import SamStep, StepGraph

ImageSource = ImageSet | FileImageSet  # in memory, or streamed from disk: the learner reads both the same way


@dataclass
class FitOptions:
    """What one ``fit`` call was asked for, beside the config."""

    callback: EpochCallback | None
    progress: bool
    checkpoint_every: int
    max_steps: int | None
    validator: ValidationFn | None
    validate_every: int | None
    log: Callable[[str], None] | None


@dataclass
class FitRun:
    """One fit call's state: the data, what a checkpoint saves (watermark, position, history, best watermark,
    validation records) and the counters that decide when to validate, save, check finiteness and stop."""

    train: ImageSource
    images: torch.Tensor | None  # in memory on the device; None when streamed from disk
    labels: torch.Tensor
    steps: int
    device: torch.device
    options: FitOptions
    validate_every: int
    check_every: int
    w: torch.Tensor
    finite: torch.Tensor
    ckpt: FitCheckpoint | None = None
    sam: SamStep | None = None
    start_epoch: int = 0
    start_step: int = 0
    history: list[EpochRecord] = field(default_factory=list)
    best: dict[str, Any] | None = None
    validation: list[dict[str, Any]] = field(default_factory=list)
    global_step: int = 0
    last_checked: int = 0
    images_seen: int = 0
    graphs: dict[int, StepGraph] = field(default_factory=dict)

    @property
    def streaming(self) -> bool:
        return self.images is None

    def save(self, epoch: int, step: int) -> None:
        if self.ckpt is not None:
            self.ckpt.save(self.w, epoch, step, self.history, self.steps, self.best, self.validation)
