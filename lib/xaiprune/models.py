"""Classifiers for 28x28 (and larger) MedMNIST images, written so that LRP (zennit's composite, Captum's epsilon) can explain them.

Three architectures, built by name through :data:`ARCHS`:

- ``vgg16_bn``: VGG-16 with batch norm (Simonyan & Zisserman 2015, https://arxiv.org/abs/1409.1556),
  adapted to small images: max-pooling after the first four blocks only (28 -> 14 -> 7 -> 3 -> 1),
  and the three 4096-wide dense layers replaced by global average pooling and one linear layer,
  as in the common CIFAR variants.
- ``resnet18``: ResNet-18 (He et al. 2016, https://arxiv.org/abs/1512.03385) as in the MedMNIST v2
  benchmark at 28x28: a 3x3 stride-1 stem and no max-pool.
- ``small_cnn``: three conv blocks, for quick runs and tests.

Every model is a :class:`SegmentedModel`: an ordered ``segments`` dict whose composition is the whole
forward pass. The distributed system cuts the model between segments, and pruning a segment's last
conv layer shrinks the activation sent to the next device.

LRP constraints (Captum, behind the ``lrp_epsilon`` variant, has rules only for some module types; zennit's composite
merges BatchNorm and needs distinct modules): no ``nn.Flatten`` module (flatten is
``torch.flatten`` inside :class:`Head`), no empty ``nn.Sequential``, one ``nn.ReLU`` instance per
use and never in place, and residual sums through Captum's ``Addition_Module``.
Used by ``02_train.ipynb`` and every later notebook.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch
from captum.attr._utils.custom_modules import Addition_Module
from torch import nn


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU()]


class Head(nn.Module):
    """Global average pooling, flatten and a linear classifier."""

    def __init__(self, c_in: int, n_classes: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))


class SegmentedModel(nn.Module):
    """A network given as named, ordered segments; ``forward`` runs them in turn."""

    def __init__(self, segments: "OrderedDict[str, nn.Module]"):
        super().__init__()
        self.segments = nn.ModuleDict(segments)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for segment in self.segments.values():
            x = segment(x)
        return x

    def run_segments(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Run segments ``start`` to ``stop`` (exclusive), as one device of a split model would."""
        for segment in list(self.segments.values())[start:stop]:
            x = segment(x)
        return x


VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def vgg16_bn(in_channels: int, n_classes: int) -> SegmentedModel:
    """VGG-16-BN for small images, one segment per conv block (the head joins the fifth)."""
    segments = OrderedDict()
    c_in = in_channels
    for b, widths in enumerate(VGG16_BLOCKS, start=1):
        layers: list[nn.Module] = []
        for width in widths:
            layers += conv_bn_relu(c_in, width)
            c_in = width
        if b < len(VGG16_BLOCKS):
            layers.append(nn.MaxPool2d(2))
        else:
            layers.append(Head(c_in, n_classes))
        segments[f"block{b}"] = nn.Sequential(*layers)
    return SegmentedModel(segments)


class BasicBlock(nn.Module):
    """ResNet basic block; the identity shortcut is a plain pass-through, the sum an ``Addition_Module``."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))
        self.add = Addition_Module()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        identity = x if self.shortcut is None else self.shortcut(x)
        return self.relu2(self.add(out, identity))


def resnet18(in_channels: int, n_classes: int) -> SegmentedModel:
    """ResNet-18 with a 3x3 stem and no max-pool; segments: stem+layer1, layer2, layer3, layer4+head."""
    def stage(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
        return [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out)]

    segments = OrderedDict(
        stage1=nn.Sequential(*conv_bn_relu(in_channels, 64), *stage(64, 64, 1)),
        stage2=nn.Sequential(*stage(64, 128, 2)),
        stage3=nn.Sequential(*stage(128, 256, 2)),
        stage4=nn.Sequential(*stage(256, 512, 2), Head(512, n_classes)),
    )
    return SegmentedModel(segments)


def small_cnn(in_channels: int, n_classes: int) -> SegmentedModel:
    """Three conv blocks (16, 32, 64 filters) for quick runs; one segment per block."""
    return SegmentedModel(OrderedDict(
        block1=nn.Sequential(*conv_bn_relu(in_channels, 16), nn.MaxPool2d(2)),
        block2=nn.Sequential(*conv_bn_relu(16, 32), nn.MaxPool2d(2)),
        block3=nn.Sequential(*conv_bn_relu(32, 64), Head(64, n_classes)),
    ))


ARCHS: dict[str, Callable[[int, int], SegmentedModel]] = {
    "vgg16_bn": vgg16_bn,
    "resnet18": resnet18,
    "small_cnn": small_cnn,
}


def build(arch: str, in_channels: int, n_classes: int) -> SegmentedModel:
    """Build an architecture of :data:`ARCHS` by name."""
    if arch not in ARCHS:
        raise ValueError(f"arch={arch!r} is not a known architecture; expected one of {sorted(ARCHS)}")
    return ARCHS[arch](in_channels, n_classes)


def conv_layers(model: nn.Module) -> "OrderedDict[str, nn.Conv2d]":
    """All conv layers of a model by qualified name, in forward order (the filters pruning scores)."""
    return OrderedDict((name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d))
