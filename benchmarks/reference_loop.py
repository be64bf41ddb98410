"""The yardstick for the speed issue: a deliberately plain copy of the official training step.

Eager fp32, NCHW, the model's parameters left trainable as in the official
code, a torch DataLoader over a PIL-transform dataset (ToTensor + Normalize,
per image), noise drawn per batch, and the same sharpness-aware sign update.
Data order, flips and noise come from the same (seed, epoch, step) streams as
the library's learner, so after the same steps both watermarks are comparable.
Never used by the library.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from watermark_ood.core.randomness import generator
from watermark_ood.data.preprocessing import Normalization
from watermark_ood.watermark.config import FitConfig
from watermark_ood.watermark.learner import PERMUTATION_TAG


class _PilDataset(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, normalization: Normalization) -> None:
        self.images = images.permute(0, 2, 3, 1).numpy()
        self.labels = labels.numpy()
        self.transform = transforms.Compose([transforms.ToTensor(),
                                             transforms.Normalize(normalization.mean, normalization.std)])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def cal_loss(config: FitConfig, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    n = len(y)
    loss = F.cross_entropy(logits[:n], y)
    if config.objective == "energy":
        ec_out = (logits[n:] * config.t_out).exp().mean(1)
        ec_in = (-logits[:n] * config.t_in).exp().mean(1)
        return loss + config.beta * (ec_out.mean() + ec_in.mean())
    loss_oe = -(logits[n:].mean(1) - torch.logsumexp(logits[n:], dim=1))
    return loss + config.beta * loss_oe.mean()


def reference_fit(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, normalization: Normalization,
                  config: FitConfig, steps: int, num_workers: int = 0, device: str = "cpu") -> torch.Tensor:
    """``steps`` official-style SAM steps of epoch 0 on ``device``; returns the watermark.

    As in the official code, batches come from the DataLoader on the CPU and are
    moved to the device per step; flips and noise are drawn on the device from
    the same (seed, epoch, step) stream the library's learner uses there.
    """
    dev = torch.device(device)
    model.eval().to(dev)
    for p in model.parameters():
        p.requires_grad_(True)
    cpu = torch.device("cpu")
    order = torch.randperm(len(images), generator=generator(cpu, config.seed, PERMUTATION_TAG, 0)).tolist()
    batches = [order[i:i + config.batch_size] for i in range(0, len(order), config.batch_size)]
    loader = DataLoader(_PilDataset(images, labels, normalization), batch_sampler=batches, num_workers=num_workers,
                        pin_memory=dev.type == "cuda")
    watermark = torch.zeros(1, *images.shape[1:], device=dev)
    alpha = config.alpha_at(0)
    for step, (x, y) in enumerate(loader):
        if step >= steps:
            break
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        rng = generator(dev, config.seed, 0, step)
        if config.hflip:
            flip = torch.rand(len(y), generator=rng, device=dev) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        noise = torch.randn(x.shape, generator=rng, device=dev) * config.sigma
        data = torch.cat((x, noise), 0)
        watermark.requires_grad_()
        loss = cal_loss(config, model(data + watermark), y)
        grad = torch.autograd.grad(loss, [watermark])[0].detach()
        perturb = grad.sign() * grad.abs() / (grad ** 2).sum().sqrt()
        watermark.requires_grad_()
        loss = cal_loss(config, model(data + watermark + perturb * config.rho), y)
        grad = torch.autograd.grad(loss, [watermark])[0].detach()
        watermark = watermark.detach() - alpha * torch.sign(grad)
    for p in model.parameters():
        p.requires_grad_(False)
    model.cpu()
    return watermark.cpu()


@torch.no_grad()
def reference_logits(model: torch.nn.Module, images: torch.Tensor, normalization: Normalization,
                     watermark: torch.Tensor | None, batch_size: int = 200, device: str = "cpu") -> torch.Tensor:
    """The official evaluation: a DataLoader with batch 200, per-image transforms, no_grad."""
    dev = torch.device(device)
    model.eval().to(dev)
    loader = DataLoader(_PilDataset(images, torch.zeros(len(images), dtype=torch.int64), normalization),
                        batch_size=batch_size, shuffle=False)
    out = []
    for x, _ in loader:
        x = x.to(dev)
        out.append(model(x if watermark is None else x + watermark.to(dev)).cpu())
    model.cpu()
    return torch.cat(out)


def as_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
