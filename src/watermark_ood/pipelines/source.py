"""Where a pipeline's classifier comes from: one description shared by every command.

    >>> ModelSource("resnet20").check()
    Traceback (most recent call last):
    ...
    watermark_ood.core.errors.WatermarkOODError: --model resnet20 without --checkpoint: give its trained weights ...
"""

from __future__ import annotations

from dataclasses import dataclass

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.models.registry import LoadedModel, load_model


@dataclass(frozen=True)
class ModelSource:
    """Where the classifier comes from: a registry name, ``torchvision:NAME``, ``module:callable`` or
    ``path/to/file.py:callable`` (called with no arguments), and its weights.

    A detector is only as good as the weights it was fitted on, so a model without a checkpoint is refused unless
    ``random_weights`` says that the seeded random initialisation is meant (trying the tool, tests).
    """

    name: str
    checkpoint: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    random_weights: bool = False

    def check(self) -> None:
        """The one rule on weights, judged before any data is read."""
        if self.checkpoint is None and not self.random_weights:
            raise WatermarkOODError(f"--model {self.name} without --checkpoint: give its trained weights with "
                                    "--checkpoint FILE, or --random-weights to try the tool on an untrained model")
        if self.checkpoint is not None and self.random_weights:
            raise WatermarkOODError("--random-weights and --checkpoint exclude each other")

    def load(self, channels: int, fallback_classes: int | None = None) -> LoadedModel:
        self.check()
        return load_model(self.name, self.checkpoint, None, channels, self.mean, self.std,
                          fallback_classes=fallback_classes)
