"""Per-image norms of every parameter's gradient, for a whole batch from one forward and one backward pass.

GradUncertainty (Igoe et al., 2022) scores an image by sum_w ||dL(x)/dw||_2^2 with L the binary cross-entropy of
the softmax to an all-ones label; GradNorm as pytorch-ood computes it by default (Huang et al., NeurIPS 2021) by
sum_w ||dL(x)/dw||_1 with L the cross-entropy to the uniform distribution. Both need each image's own gradient of
every parameter. pytorch-ood builds them with ``torch.func.vmap(grad(...))``, which on a CPU runs the whole network
once per image in disguise; a ResNet-18 leaderboard with both kinds did not finish in 34 minutes on one core.

Here the batch runs once with its losses summed (in eval mode rows do not interact, so each row's share of the
backward pass is its own gradient) and each layer's per-image gradient is rebuilt from what that layer saw and
what came back to it:

- Linear, input a_i and output gradient g_i: dW_i = g_i a_i^T, so ||dW_i||_1 = ||g_i||_1 ||a_i||_1 and
  ||dW_i||_2^2 = ||g_i||^2 ||a_i||^2 without forming dW_i; db_i = g_i;
- Conv2d: dW_i = G_i U_i^T with U_i the unfolded input patches (C_in k^2 x T positions) and G_i the output
  gradient (C_out x T): formed in chunks of images for the L1 norm; for the squared L2 norm either formed or, when
  cheaper, ||G_i U_i^T||_F^2 = sum_{t,s} (U_i^T U_i)_{ts} (G_i^T G_i)_{ts} (the "ghost norm" of DP training);
- BatchNorm in eval mode: dgamma_i = sum_t g_it xhat_it, dbeta_i = sum_t g_it per channel, xhat from the running
  statistics.

A model with any other parametrised layer, a layer called twice in one pass, or an input changed in place after a
layer read it is scored by pytorch-ood's own class instead (the answer is the same, only slower); tests compare
both on real architectures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

CHUNK_BYTES = 64 * 2**20  # at most this many bytes of per-image conv gradients are formed at once


def uncertainty_loss(logits: torch.Tensor) -> torch.Tensor:
    """GradUncertainty's loss summed over rows: per row, BCE(softmax(z), 1) summed over classes (the library's)."""
    return F.binary_cross_entropy(logits.softmax(dim=1), torch.ones_like(logits), reduction="sum")


def uniform_cross_entropy_loss(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """GradNorm's loss summed over rows: per row, the cross-entropy of softmax(z / T) to the uniform distribution,
    averaged over classes (the library's ``_uniform_cross_entropy`` of one row)."""
    return -(logits / temperature).log_softmax(dim=1).mean(dim=1).sum()


@dataclass(frozen=True)
class GradientNorm:
    """Which per-image gradient norm: its loss (summed over rows) and ``power`` 1 (L1) or 2 (squared L2)."""

    loss: Callable[[torch.Tensor], torch.Tensor]
    power: int


UNCERTAINTY = GradientNorm(uncertainty_loss, 2)
GRADNORM_ALL = GradientNorm(uniform_cross_entropy_loss, 1)


class Unsupported(Exception):
    """This model has a layer whose per-image gradient is not rebuilt here: the library's loop scores it."""


def per_image_norms(model: nn.Module, x: torch.Tensor, norm: GradientNorm) -> torch.Tensor:
    """sum over every parameter w of ||dL(x_i)/dw|| (``norm.power`` 1: L1, 2: squared L2) for each row of ``x``.

    Raises :class:`Unsupported` when a parametrised layer is not one of Linear, Conv2d (zero padding) and
    BatchNorm in eval mode, or a layer runs twice in one pass.
    """
    layers = _parametrised(model)
    seen: dict[nn.Module, tuple[torch.Tensor, int, torch.Tensor]] = {}

    def keep(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if module in seen:
            raise Unsupported(f"{type(module).__name__} runs twice in one pass")
        seen[module] = (inputs[0].detach(), inputs[0]._version, output)
        return output.clone()  # later in-place ops (ReLU(inplace=True), +=) change the clone, not this output

    handles = [layer.register_forward_hook(keep) for layer in layers]
    try:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            loss = norm.loss(model(x).float())
            ran = [layer for layer in layers if layer in seen]
            grads = torch.autograd.grad(loss, [seen[layer][2] for layer in ran], allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    total = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    for layer, grad in zip(ran, grads):
        inputs, version, _ = seen[layer]
        if inputs._version != version:
            raise Unsupported(f"the input of a {type(layer).__name__} was changed in place after it was read")
        if grad is not None:
            total += _layer_norms(layer, inputs.float(), grad.float(), norm.power).double()
    return total.to(torch.float32)


def _parametrised(model: nn.Module) -> list[nn.Module]:
    layers = [m for m in model.modules() if next(m.parameters(recurse=False), None) is not None]
    for layer in layers:
        names = {name for name, _ in layer.named_parameters(recurse=False)}
        if isinstance(layer, nn.Linear) or (isinstance(layer, nn.Conv2d) and layer.padding_mode == "zeros"):
            continue
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and not layer.training and \
                layer.running_mean is not None and names <= {"weight", "bias"}:
            continue
        raise Unsupported(f"no per-image gradient here for {type(layer).__name__}")
    return layers


def _layer_norms(layer: nn.Module, a: torch.Tensor, g: torch.Tensor, power: int) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return _linear(layer, a, g, power)
    if isinstance(layer, nn.Conv2d):
        return _conv(layer, a, g, power)
    return _batchnorm(layer, a, g, power)


def _reduce(tensor: torch.Tensor, power: int, scratch: bool = False) -> torch.Tensor:
    """Per-row L1 norm or squared L2 norm of everything after the first dimension; ``scratch``: the tensor is ours
    to overwrite (a formed gradient), saving a copy as large as it."""
    flat = tensor.flatten(1)
    if scratch:
        return (flat.abs_() if power == 1 else flat.square_()).sum(dim=1)
    return flat.abs().sum(dim=1) if power == 1 else (flat * flat).sum(dim=1)


def _linear(layer: nn.Linear, a: torch.Tensor, g: torch.Tensor, power: int) -> torch.Tensor:
    if a.dim() == 2:  # one position per image: the outer product's norm is the product of norms
        gradient = _reduce(g, power)
        return gradient * _reduce(a, power) + (gradient if layer.bias is not None else 0.0)
    weight = torch.einsum("bto,bti->boi", g.flatten(1, -2), a.flatten(1, -2))
    bias = _reduce(g.flatten(1, -2).sum(dim=1), power) if layer.bias is not None else 0.0
    return _reduce(weight, power, True) + bias


def _conv(layer: nn.Conv2d, a: torch.Tensor, g: torch.Tensor, power: int) -> torch.Tensor:
    batch, groups = len(a), layer.groups
    patches = F.unfold(a, layer.kernel_size, layer.dilation, layer.padding, layer.stride)  # B x C_in k^2 x T
    positions = patches.shape[-1]
    u = patches.view(batch, groups, -1, positions)
    grads = g.reshape(batch, groups, -1, positions)  # B x G x C_out/G x T
    bias = _reduce(_per_channel(g), power) if layer.bias is not None else 0.0
    rows, cols = u.shape[2], grads.shape[2]
    if positions == 1:  # one output position (a 1x1 map): dW_i is an outer product, as in a linear layer
        return (_reduce(grads.flatten(2), power) * _reduce(u.flatten(2), power) if groups == 1 else
                _reduce(torch.einsum("bgo,bgi->bgoi", grads[..., 0], u[..., 0]), power, True)) + bias
    if power == 2 and _ghost_is_cheaper(positions, rows, cols):
        gram_u = torch.einsum("bgit,bgis->bgts", u, u)
        gram_g = torch.einsum("bgot,bgos->bgts", grads, grads)
        return gram_u.mul_(gram_g).flatten(1).sum(dim=1) + bias
    step = max(1, CHUNK_BYTES // max(1, 4 * groups * rows * cols))
    weight = torch.cat([_reduce(torch.einsum("bgot,bgit->bgoi", grads[i:i + step], u[i:i + step]), power, True)
                        for i in range(0, batch, step)])
    return weight + bias


def _ghost_is_cheaper(positions: int, rows: int, cols: int) -> bool:
    """Whether two T x T Gram matrices (T positions, of C_in k^2 = rows and C_out = cols values) cost fewer
    multiplications than forming the cols x rows gradient from T positions."""
    return positions * (rows + cols) < rows * cols


def _batchnorm(layer: nn.modules.batchnorm._BatchNorm, a: torch.Tensor, g: torch.Tensor,
               power: int) -> torch.Tensor:
    shape = (1, -1) + (1,) * (a.dim() - 2)
    xhat = (a - layer.running_mean.float().view(shape)) / torch.sqrt(layer.running_var.float().view(shape) + layer.eps)
    total = _reduce(_per_channel(g * xhat), power) if layer.weight is not None else 0.0
    return total + (_reduce(_per_channel(g), power) if layer.bias is not None else 0.0)


def _per_channel(tensor: torch.Tensor) -> torch.Tensor:
    """B x C x ... summed over the positions after the channel (B x C stays as it is)."""
    return tensor.flatten(2).sum(dim=2) if tensor.dim() > 2 else tensor
