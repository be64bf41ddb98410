"""DenseNet-BC (Huang et al., CVPR 2017) as trained on CIFAR-10 by ODIN (Liang et al., ICLR 2018) and reused by the
Mahalanobis paper (Lee et al., NeurIPS 2018): the OOD literature's fixed model before WRN-40-2.

Depth 100, growth rate 12, compression 0.5, bottleneck layers (BN-ReLU-conv1x1 to 4k channels, BN-ReLU-conv3x3 to k,
concatenated to the layer's input); a transition (BN-ReLU-conv1x1 halving the channels, then 2x2 average pooling)
after dense blocks 1 and 2; then BN-ReLU and the release's ``avg_pool2d(kernel 7)`` on the 8x8 map, which averages
the top-left 7x7 window only: the published weights give their logits with it, so it is kept. Key names
(``conv1``, ``block{1,2,3}.layer.{i}.bn1/conv1/bn2/conv2``, ``trans{1,2}.bn1/conv1``, ``bn1``, ``fc``) match the
release's state dict. ReLUs are not in place, so that per-image gradients can read each layer's input afterwards.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Bottleneck(nn.Module):
    def __init__(self, in_planes: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([x, out], 1)


class DenseBlock(nn.Module):
    def __init__(self, layers: int, in_planes: int, growth: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(*(Bottleneck(in_planes + i * growth, growth) for i in range(layers)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class Transition(nn.Module):
    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv1(F.relu(self.bn1(x))), 2)


class DenseNetBC(nn.Module):
    def __init__(self, depth: int = 100, num_classes: int = 10, in_channels: int = 3, growth: int = 12,
                 reduction: float = 0.5) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"DenseNet-BC depth must be 6n + 4, got {depth}")
        layers = (depth - 4) // 6
        planes = 2 * growth
        self.conv1 = nn.Conv2d(in_channels, planes, 3, 1, 1, bias=False)
        self.block1 = DenseBlock(layers, planes, growth)
        planes += layers * growth
        self.trans1 = Transition(planes, int(planes * reduction))
        planes = int(planes * reduction)
        self.block2 = DenseBlock(layers, planes, growth)
        planes += layers * growth
        self.trans2 = Transition(planes, int(planes * reduction))
        planes = int(planes * reduction)
        self.block3 = DenseBlock(layers, planes, growth)
        planes += layers * growth
        self.bn1 = nn.BatchNorm2d(planes)
        self.fc = nn.Linear(planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.trans1(self.block1(self.conv1(x)))
        out = self.trans2(self.block2(out))
        out = F.relu(self.bn1(self.block3(out)))
        return F.avg_pool2d(out, 7).flatten(1)  # the release's 7x7 window of the 8x8 map (see the module's doc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))
