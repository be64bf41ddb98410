"""Where a pipeline's classifier comes from: one description shared by every command."""

from __future__ import annotations

from dataclasses import dataclass

from watermark_ood.models.registry import LoadedModel, load_model


@dataclass(frozen=True)
class ModelSource:
    """Where the classifier comes from: a registry name (or torchvision:/module:callable) and its weights."""

    name: str
    checkpoint: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def load(self, channels: int, fallback_classes: int | None = None) -> LoadedModel:
        return load_model(self.name, self.checkpoint, None, channels, self.mean, self.std,
                          fallback_classes=fallback_classes)
