"""Penultimate features through a hook, and post-hoc scores that use them or gradients.

The hook sits on the input of the model's last ``nn.Linear`` (``linear`` in the
CIFAR ResNets, ``fc`` in WRN and torchvision ResNets, ``classifier[-1]`` or
``heads.head`` elsewhere), so it works for every registry and torchvision
classifier. The scores themselves come from pytorch-ood (see :mod:`detectors`);
ODIN, which needs the model, runs here, with a watermarked model plugged in as
:class:`WatermarkedModel`.
"""

from __future__ import annotations


import numpy as np
import torch
from torch import nn

from .data import ImageSet
from .errors import WatermarkOODError
from .preprocessing import Normalization
from .runtime import ExecutionConfig
from .streaming import place_rows
from .watermark import Watermark



class WatermarkedModel(nn.Module):
    """``f(x + w)`` as one module: drop it into any detector that expects a model on normalized inputs."""

    def __init__(self, model: nn.Module, watermark: Watermark | torch.Tensor | None) -> None:
        super().__init__()
        self.model = model
        tensor = watermark.tensor if isinstance(watermark, Watermark) else watermark
        self.register_buffer("watermark", torch.zeros(1) if tensor is None else tensor.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x + self.watermark)


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
    import copy

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


@torch.no_grad()
def logits_and_features(model: nn.Module, images: ImageSet, normalization: Normalization,
                        watermark: Watermark | None, execution: ExecutionConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over a set giving logits and penultimate features (fp32, CPU).

    A streamed set is decoded batch by batch; rows of files skipped as unreadable are NaN in both.
    """
    device = execution.torch_device()
    model = model.eval().to(device)
    hook = PenultimateHook(model)
    size = execution.eval_batch_size
    logits, features = [], []
    try:
        for kept, pixels in images.batches(size):
            if len(pixels) == 0:  # every file of this batch was unreadable
                logits.append((kept, None))
                features.append((kept, None))
                continue
            x = normalization(pixels.to(device))
            if watermark is not None:
                x = watermark.apply(x)
            with execution.autocast(device):
                logits.append((kept, model(x).float().cpu()))
            features.append((kept, hook.features.pop()))
    finally:
        hook.close()
    return place_rows(logits, len(images), size), place_rows(features, len(images), size)


def odin_scores(model: nn.Module, images: ImageSet, normalization: Normalization, watermark: Watermark | None,
                execution: ExecutionConfig, temperature: float = 1000.0, eps: float = 0.0014) -> np.ndarray:
    """ODIN (temperature scaling + input perturbation) via pytorch-ood; higher = more ID."""
    from pytorch_ood.detector import ODIN

    device = execution.torch_device()
    module = WatermarkedModel(model, watermark).eval().to(device)
    detector = ODIN(module, eps=eps, temperature=temperature, norm_std=list(normalization.std))
    out = []
    for kept, pixels in images.batches(execution.eval_batch_size):
        scores = -detector.predict(normalization(pixels.to(device))).detach().float().cpu() if len(pixels) else None
        out.append((kept, None if scores is None else scores[:, None]))
    return place_rows(out, len(images), execution.eval_batch_size)[:, 0].numpy()
