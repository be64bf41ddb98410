"""The feature tap on a model's head: the input of its last ``nn.Linear`` (``linear`` in the CIFAR ResNets, ``fc``
in WRN and torchvision ResNets, ``classifier[-1]`` or ``heads.head`` elsewhere), through a forward pre-hook, so
it works for every registry and torchvision classifier without changing the model. Inference with the tap is in
:mod:`watermark_ood.runtime.inference`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from watermark_ood.core.errors import WatermarkOODError


def last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise WatermarkOODError(f"{type(model).__name__} has no nn.Linear head; feature scores need one")
    return linears[-1]


def split_at_head(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """(a copy of ``model`` returning penultimate features, its last linear layer): ``head(f(x)) == model(x)``.

    Plain modules instead of a hook, so that gradients flow (learning on features) and traces capture it (export).
    Callers check the equality where it matters: it fails for models that do more after their last linear layer.
    """

    clone = copy.deepcopy(model)
    target = last_linear(clone)
    for module in clone.modules():
        for name, child in module.named_children():
            if child is target:
                setattr(module, name, nn.Identity())
                return clone, target
    raise WatermarkOODError("could not locate the model's last linear layer")  # pragma: no cover - found above


class PenultimateHook:
    """Captures the input of the last linear layer during forward passes."""

    def __init__(self, model: nn.Module) -> None:
        self.features: list[torch.Tensor] = []
        self.handle = last_linear(model).register_forward_pre_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        self.features.append(inputs[0].detach().float().flatten(1).cpu())

    def close(self) -> torch.Tensor:
        self.handle.remove()
        return torch.cat(self.features) if self.features else torch.zeros(0)


