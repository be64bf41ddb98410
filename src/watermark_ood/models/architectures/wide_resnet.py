"""Wide ResNet (Zagoruyko & Komodakis, 2016) as used by Outlier Exposure and energy-OOD.

Key names (``conv1``, ``block{1,2,3}.layer.{i}.bn1/conv1/bn2/conv2/convShortcut``,
``bn1``, ``fc``) match checkpoints such as ``cifar10_wrn_pretrained_epoch_99.pt``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WideBasicBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(pre)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.equal_in_out else self.convShortcut(pre)
        return shortcut + out


class NetworkBlock(nn.Module):
    def __init__(self, count: int, in_planes: int, out_planes: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[
            WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
            for i in range(count)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth: int = 40, num_classes: int = 10, widen_factor: int = 2, drop_rate: float = 0.3,
                 in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))
