"""Models: a small MLP and CNN for 8×8 digits / MNIST, ResNet-18 (CIFAR variant) for GPUs."""

from __future__ import annotations

import math

import torch
from torch import nn

MODELS = ("mlp", "cnn", "resnet18")


class MLP(nn.Module):
    """Flatten → hidden (ReLU) → classes; 64-64-10 on digits (REFERENCE §1.5)."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x):
        return self.net(x)


class SmallCNN(nn.Module):
    """Two 3×3 conv layers and a linear head; works from 8×8 to 32×32 inputs."""

    def __init__(self, channels: int, num_classes: int, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Linear(8 * width, num_classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32×32 images: 3×3 stem, no max-pool (≈ 11.2 M parameters)."""

    def __init__(self, channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()
        )
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def build(name: str, image_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Build model ``name`` (one of :data:`MODELS`) for images of ``image_shape``."""
    channels = image_shape[0]
    if name == "mlp":
        return MLP(math.prod(image_shape), num_classes)
    if name == "cnn":
        return SmallCNN(channels, num_classes)
    if name == "resnet18":
        return ResNet18(channels, num_classes)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
