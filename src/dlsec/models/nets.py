"""The built-in architectures. Each returns logits and takes inputs in the card's bounds."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SimpleNet(nn.Module):
    """The seed article's MLP: Linear(in, hidden) -> ReLU -> Linear(hidden, classes).

    The input is flattened first, so the same module takes ``N x D`` or image batches.
    Parameter names (``fc1``, ``fc2``) match the seed, so its state dicts load as they are.
    """

    def __init__(self, input_size: int, hidden_size: int = 128, output_size: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(input_size, hidden_size)
        self.fc2 = nn.Linear(hidden_size, output_size)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


class SmallCNN(nn.Module):
    """Two 3x3 conv layers (each ReLU + 2x2 max-pool), then two linear layers."""

    def __init__(
        self,
        in_channels: int,
        height: int,
        width: int,
        num_classes: int = 10,
        *,
        channels: tuple[int, int] = (32, 64),
        hidden: int = 128,
    ) -> None:
        super().__init__()
        c1, c2 = channels
        self.conv1 = nn.Conv2d(in_channels, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        h, w = height // 2 // 2, width // 2 // 2
        if h < 1 or w < 1:
            raise ValueError(f"SmallCNN needs inputs of at least 4x4, got {height}x{width}")
        self.fc1 = nn.Linear(c2 * h * w, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


class TanhCNN(nn.Module):
    """The CNN of Papernot, Thakurta, Song, Chien and Erlingsson, "Tempered Sigmoid
    Activations for Deep Learning with Differential Privacy" (AAAI 2021), for MNIST and
    Fashion-MNIST, with tanh (the tempered sigmoid they recommend) as every activation:

    conv 16 filters 8x8 stride 2 -> tanh -> max-pool 2x2 stride 1 -> conv 32 filters 4x4
    stride 2 -> tanh -> max-pool 2x2 stride 1 -> linear 32 -> tanh -> linear ``num_classes``.

    The first convolution pads by 3 on each side, as Opacus's and Tramer and Boneh's
    PyTorch ports of the network do (28 x 28 inputs then reach the linear layers as
    32 x 4 x 4, 26,010 parameters for 10 classes). No BatchNorm: DP-SGD (Opacus,
    ghost clipping included) trains it as it is. Bounded activations keep per-sample
    gradients small, so clipping destroys less signal than with ReLU (the paper's point).

    Inputs smaller than 14 x 14 leave nothing for the second pooling layer: refused with
    ``ValueError`` (the registry turns it into a ``ModelError``).
    """

    MIN_SIZE = 14

    def __init__(self, in_channels: int, height: int, width: int, num_classes: int = 10) -> None:
        super().__init__()
        h, w = self.feature_size(height), self.feature_size(width)
        if h < 1 or w < 1:
            raise ValueError(f"TanhCNN needs inputs of at least {self.MIN_SIZE} x "
                             f"{self.MIN_SIZE}, got {height} x {width}")
        self.conv1 = nn.Conv2d(in_channels, 16, 8, stride=2, padding=3)
        self.conv2 = nn.Conv2d(16, 32, 4, stride=2)
        self.fc1 = nn.Linear(32 * h * w, 32)
        self.fc2 = nn.Linear(32, num_classes)

    @staticmethod
    def feature_size(size: int) -> int:
        """The side the second pooling layer leaves of an input side ``size`` (< 1: too small)."""
        s = (size + 2 * 3 - 8) // 2 + 1 - 1  # conv1, then pool 2x2 stride 1
        if s < 4:
            return 0
        return (s - 4) // 2 + 1 - 1  # conv2, then pool 2x2 stride 1

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(torch.tanh(self.conv1(x)), 2, 1)
        x = F.max_pool2d(torch.tanh(self.conv2(x)), 2, 1)
        x = torch.tanh(self.fc1(x.flatten(1)))
        return self.fc2(x)


class Normalized(nn.Module):
    """Wraps a network so it takes raw inputs (in the card's bounds) and normalizes inside.

    Attacks then work in input space, where the threat model's epsilon and bounds live.
    ``mean`` and ``std`` hold one value, or one per channel (the input's first dimension
    after the batch: C of ``C x H x W``, the features of a flat input). The buffers are
    not persistent: they come from the model card, and the weights file holds only the
    wrapped network's state dict.
    """

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or not len(mean):
            raise ValueError("mean and std need the same, non-zero length")
        self.net = net
        self.register_buffer("mean", torch.tensor([float(v) for v in mean]), persistent=False)
        self.register_buffer("std", torch.tensor([float(v) for v in std]), persistent=False)

    mean: Tensor
    std: Tensor

    def forward(self, x: Tensor) -> Tensor:
        mean, std = self.mean, self.std
        if mean.numel() > 1:  # per channel: along dim 1 of the batch
            shape = (1, mean.numel()) + (1,) * (x.dim() - 2)
            mean, std = mean.view(shape), std.view(shape)
        return self.net((x - mean) / std)


class BasicBlock(nn.Module):
    """He et al.'s basic residual block: two 3x3 conv + BatchNorm, identity or 1x1 shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for CIFAR-size inputs (He, Zhang, Ren and Sun, "Deep Residual Learning for
    Image Recognition", CVPR 2016), in the CIFAR variant used by most robustness papers
    (Madry et al.'s and Kuang Liu's ports): a 3x3 conv stem with stride 1 and no max-pool,
    four stages of two :class:`BasicBlock` (64, 128, 256, 512 channels; stride 2 from the
    second stage on), global average pooling and one linear layer.

    ``width`` scales every stage's channels (``width=0.125``: 8, 16, 32, 64), so tests
    build a narrow network fast. 11,173,962 parameters at width 1 for 3 x 32 x 32 inputs
    and 10 classes. The global pooling takes any input side; inputs below 8 x 8 leave
    a 1 x 1 map after the strided stages, which still works.

    Notes:
        The network holds BatchNorm layers: DP-SGD (Opacus) cannot train them
        (per-sample gradients mix samples); ``dlsec`` converts them to GroupNorm through
        Opacus's ``ModuleValidator.fix`` where DP training asks it to, or refuses.
    """

    STAGES = (64, 128, 256, 512)

    def __init__(self, in_channels: int, num_classes: int = 10, *, width: float = 1.0) -> None:
        super().__init__()
        if not (width > 0 and math.isfinite(width)):
            raise ValueError(f"ResNet18 width must be positive, got {width}")
        planes = [max(1, round(c * width)) for c in self.STAGES]
        self.conv1 = nn.Conv2d(in_channels, planes[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        stages: list[nn.Module] = []
        in_planes = planes[0]
        for i, p in enumerate(planes):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(in_planes, p, stride), BasicBlock(p, p, 1)))
            in_planes = p
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)
