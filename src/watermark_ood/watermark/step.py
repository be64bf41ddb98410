"""One step of the paper's sharpness-aware sign descent on the watermark, eager or replayed as a CUDA graph.

``g1 = grad L(w)``, ``e = g1 / ||g1||``, ``g2 = grad L(w + rho e)``, ``w <- project(w - alpha sign(g2))``.
Under torchrun each rank's gradients are weighted by its share of the global batch and summed, which equals the
single-process gradient.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from watermark_ood.core import distributed
from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.models.taps import split_at_head
from watermark_ood.runtime.device import ExecutionConfig, prepare_model
from watermark_ood.watermark.config import FitConfig
from watermark_ood.watermark.objectives import objective_terms


class FeaturesAndLogits(torch.nn.Module):
    """(penultimate features, logits) in one differentiable pass."""

    def __init__(self, body: torch.nn.Module, head: torch.nn.Linear) -> None:
        super().__init__()
        self.body, self.head = body, head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x).flatten(1)
        return features, self.head(features)


def prepare_forward(model: torch.nn.Module, config: FitConfig, execution: ExecutionConfig, device: torch.device,
                    input_shape: tuple[int, ...]) -> Callable[[torch.Tensor], Any]:
    """The model as the objective needs it: logits, or (penultimate features, logits) for ``features``."""
    module: torch.nn.Module = prepare_model(model, execution, device)
    if config.objective == "features":
        split = FeaturesAndLogits(*split_at_head(module)).eval()
        for p in split.parameters():
            p.requires_grad_(False)
        probe = torch.randn((2, *input_shape), device=device)
        with torch.no_grad():
            if not torch.allclose(split(probe)[1], module(probe), rtol=1e-3, atol=1e-3):
                raise WatermarkOODError("the features objective needs a model whose last linear layer is its last "
                                        "operation")
        module = split
    if execution.compile:
        return torch.compile(module)
    return module


class SamStep:
    """The loss of the objective at a watermark and one sharpness-aware sign step from it."""

    def __init__(self, forward: Callable[[torch.Tensor], Any], config: FitConfig, execution: ExecutionConfig,
                 device: torch.device, anchors: torch.Tensor | None = None) -> None:
        self.forward, self.config, self.execution, self.device = forward, config, execution, device
        self.anchors = anchors  # unit ID class means of the penultimate features (features objective)
        self.use_graphs = graphs_apply(execution, device)

    def run(self, inputs: torch.Tensor) -> Any:
        if self.execution.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with self.execution.autocast(self.device, cache_enabled=not self.use_graphs):
            return self.forward(inputs)

    def scores_at_zero(self, noise: torch.Tensor) -> torch.Tensor | None:
        """anchored: the outliers' logsumexp without the watermark; it does not depend on the watermark, so it is
        computed once per step, not at both points of the sharpness-aware step."""
        if self.config.objective != "anchored":
            return None
        with torch.no_grad():
            return torch.logsumexp(self.run(noise).float(), dim=1)

    def losses(self, point: torch.Tensor, x, y, noise, at_zero) -> torch.Tensor:
        """(loss, cross-entropy, OOD term) at ``point``."""
        out = self.run(torch.cat([x, noise]) + point)
        n = len(x)
        if self.config.objective == "features":
            feats, logits = out
            ce, ood = objective_terms(self.config, logits[:n], y, logits[n:], (feats[:n], feats[n:], self.anchors))
        else:
            ce, ood = objective_terms(self.config, out[:n], y, out[n:], lse_out_at_zero=at_zero)
        return torch.stack([ce + ood, ce, ood])

    def gradient(self, point: torch.Tensor, x, y, noise, at_zero) -> tuple[torch.Tensor, torch.Tensor]:
        """The losses at ``point`` and the gradient of the first."""
        point = point.detach().requires_grad_(True)
        losses = self.losses(point, x, y, noise, at_zero)
        (grad,) = torch.autograd.grad(losses[0], point)
        return losses.detach(), grad

    def __call__(self, point: torch.Tensor, x, y, noise, alpha, share: float = 1.0):
        """One sharpness-aware sign step; returns the losses at ``point`` and the next watermark."""
        at_zero = self.scores_at_zero(noise)
        loss, g1 = self.gradient(point, x, y, noise, at_zero)
        if distributed.is_distributed():
            loss = distributed.all_reduce_sum(loss * share)
            g1 = distributed.all_reduce_sum(g1 * share)
        e = g1 / g1.norm().clamp_min(1e-12)
        _, g2 = self.gradient(point + self.config.rho * e, x, y, noise, at_zero)
        if distributed.is_distributed():
            g2 = distributed.all_reduce_sum(g2 * share)
        return loss, self.config.project(point - alpha * torch.sign(g2))


def graphs_apply(execution: ExecutionConfig, device: torch.device) -> bool:
    """CUDA graphs are used on CUDA unless switched off, compiled, or under torchrun (eager all-reduces)."""
    return (execution.cuda_graphs and device.type == "cuda" and not execution.compile
            and not distributed.is_distributed())


class StepGraph:
    """One SAM step captured as a CUDA graph over static input buffers, replayed for each batch.

    Randomness (order, flips, noise) stays outside the graph, so replays follow
    the same (seed, epoch, step) streams as eager steps; alpha is a device scalar
    so the learning-rate schedule needs no re-capture.
    """

    def __init__(self, step: Callable[..., tuple[torch.Tensor, torch.Tensor]], w: torch.Tensor,
                 x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor) -> None:
        self.w, self.x, self.y, self.noise = w.clone(), x.clone(), y.clone(), noise.clone()
        self.alpha = torch.zeros((), device=w.device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside capture (cuDNN autotuning, allocator)
            for _ in range(3):
                step(self.w, self.x, self.y, self.noise, self.alpha)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss, self.w_next = step(self.w, self.x, self.y, self.noise, self.alpha)

    def __call__(self, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor,
                 alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
        self.w.copy_(w)
        self.x.copy_(x)
        self.y.copy_(y)
        self.noise.copy_(noise)
        self.alpha.fill_(alpha)
        self.graph.replay()
        return self.loss.clone(), self.w_next.clone()
