"""A user's own nn.Module written with functional calls (F.relu, torch.relu, a residual +,
torch.cat, F.max_pool2d, x.view), a BatchNorm, as a `--model tests.user_models:...` factory."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class UserNet(nn.Module):
    def __init__(self, in_channels=1, num_classes=10, width=4, size=8):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.conv3 = nn.Conv2d(width, width, 1)
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(2 * width * (size // 2) ** 2, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = x + F.relu(self.conv2(x))  # residual
        z = torch.relu(self.conv3(x))
        x = torch.cat([x, z], dim=1)
        x = F.max_pool2d(x, 2)
        return self.head(self.drop(x.view(x.size(0), -1)))


def user_net(in_channels: int = 1, num_classes: int = 10, width: int = 4, size: int = 8) -> nn.Module:
    return UserNet(in_channels, num_classes, width, size)


class GeluNet(nn.Module):
    """Uses an op qsp does not support (GELU), after a layer: must fail before training."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 64, 10)

    def forward(self, x):
        x = F.gelu(self.conv(x))
        return self.fc(torch.flatten(x, 1))


def gelu_net() -> nn.Module:
    return GeluNet()
