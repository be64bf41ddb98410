"""How pytorch-ood's detector objects are built and kept for the registry's kinds: the classifier head a builder
may use (:class:`Head`), the library's static scores, and the hooks that keep or restore what saving needs.
Separate from :mod:`.registry`, which says *what* each kind is; this says how the library's classes are driven."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from pytorch_ood import detector as pod
from torch import nn

from watermark_ood.core.errors import WatermarkOODError


class FlatHead(nn.Module):
    """The last linear layer applied to (N, D) or (N, D, 1, 1) activations (ReAct and ASH pass feature maps)."""

    def __init__(self, head: nn.Linear) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1).to(self.head.weight.dtype))


@dataclass(frozen=True)
class Head:
    """What a builder may use: the classifier's last linear layer (if any) and the feature width seen at fit."""

    name: str
    linear: nn.Linear | None
    dim: int | None = None
    count: int | None = None  # how many ID images it is fitted on
    widths: tuple[int, ...] | None = None  # channels of each tapped layer (detectors on intermediate layers)

    def need(self) -> nn.Linear:
        if self.linear is None:
            raise WatermarkOODError(f"{self.name} needs the classifier's last linear layer")
        return self.linear

    @property
    def flat(self) -> FlatHead:
        return FlatHead(self.need())

    @property
    def weight(self) -> torch.Tensor:
        return self.need().weight.detach().float().cpu()

    @property
    def bias(self) -> torch.Tensor:
        return self.need().bias.detach().float().cpu()


def static_score(cls: str) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """The library's static logit score in float64: GEN's p^0.1 (1 - p)^0.1 terms lose ~1e-3 of the score's range
    in float32, which would make any two float32 implementations (library, onnxruntime) disagree at that level."""
    return lambda logits, features: getattr(pod, cls).score(logits.double())


def changed_map(cls: str) -> Callable[[], Callable[[torch.Tensor], torch.Tensor]]:
    """The library's own change of a feature map (its ``predict_feature_maps`` with identity head and score): the
    model's remaining layers then run on the changed map, and the energy of its logits is the score."""
    def build() -> Callable[[torch.Tensor], torch.Tensor]:
        same = lambda x: x  # noqa: E731
        detector = getattr(pod, cls)(None, head=same, detector=same)
        return lambda maps: detector.predict_feature_maps(maps.contiguous())
    return build


def energy_of_changed(logits: torch.Tensor, changed: torch.Tensor | None) -> torch.Tensor:
    return pod.EnergyBased.score(changed)
