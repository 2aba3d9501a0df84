"""Models stage: builds tile classifiers by name, always from random weights.

Reads nothing; produces an ``nn.Module`` mapping (B, 3, H, W) float tiles to (B, num_classes)
logits. Pretrained weights are never downloaded: every torchvision builder is called with
``weights=None``, and trained weights come only from a micromet checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision.models as tv_models
from torch import nn

from pipeline.errors import CheckpointError

# Channels of the MicroNet conv blocks; each block halves the tile side.
MICRONET_CHANNELS = (16, 32, 64, 128, 128)


class UnknownArchitectureError(CheckpointError, ValueError):
    """An architecture name that is not in ``ARCHITECTURES``."""


class MicroNet(nn.Module):
    """A small CNN for CPU scoring: five stride-2 conv blocks, global average pool, linear head.

    About 250 K parameters; accepts any square or rectangular tile of at least 32 px
    (smaller tiles still run but the last blocks then see a single pixel).
    """

    def __init__(self, num_classes: int = 2, channels: tuple[int, ...] = MICRONET_CHANNELS):
        super().__init__()
        blocks: list[nn.Module] = []
        in_channels = 3
        for out_channels in channels:
            blocks.append(_conv_block(in_channels, out_channels))
            in_channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) for tiles x of shape (B, 3, H, W)."""
        features = self.pool(self.features(x))
        logits: torch.Tensor = self.classifier(features.flatten(1))
        return logits


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    # bias=False because BatchNorm adds its own shift right after.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


# Channels of the PCamNet stages; each stage is two 3x3 convs, then a 2x2 max pool.
PCAMNET_CHANNELS = (32, 64, 128, 256)


class PCamNet(nn.Module):
    """A VGG-style CNN of about 1.2 M parameters sized for PatchCamelyon-like tiles (64-96 px at
    about 1 µm/px): a stride-2 stem, four stages of two 3x3 convs, global average pool,
    dropout and a linear head. About 0.12 GMAC per 96 px tile, so it scores on a CPU.
    """

    def __init__(self, num_classes: int = 2, channels: tuple[int, ...] = PCAMNET_CHANNELS):
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_relu(3, channels[0], stride=2)]
        in_channels = channels[0]
        for index, out_channels in enumerate(channels):
            if index > 0:
                layers.append(nn.MaxPool2d(2))
            layers += [_conv_bn_relu(in_channels, out_channels), _conv_bn_relu(out_channels, out_channels)]
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) for tiles x of shape (B, 3, H, W)."""
        features = self.pool(self.features(x)).flatten(1)
        logits: torch.Tensor = self.classifier(self.dropout(features))
        return logits


# Channels of the DenseNet96 stages (see the class docstring for the sizes they work on).
DENSE96_CHANNELS = (32, 64, 128, 256, 256)
# Total stride of DenseNet96: its dense output has one cell per 32 px of input.
DENSE96_STRIDE_PX = 32
# The tile DenseNet96 reads: its receptive field, exactly.
DENSE96_TILE_PX = 96


class Dense96(nn.Module):
    """A CNN whose region-wise evaluation equals its tile-wise evaluation, for exact dense inference.

    Every layer is unpadded (valid), and the pools are aligned, so on a region of
    ``96 + 32 k`` px it returns the ``(k + 1)`` outputs per side that scoring each 96 px tile at a
    32 px stride would give, while reading each pixel once. Sizes for one 96 px tile: a 2 x 2
    stride-2 stem (48), 3 x 3 conv (46), 3 x 3 conv (44), pool (22), conv (20), pool (10),
    conv (8), pool (4), conv (2), pool (1), then a 1 x 1 conv head. About 1 M parameters and
    0.11 GMAC per tile, like ``pcamnet``; dense scoring costs about a sixth of that per cell.
    """

    def __init__(self, num_classes: int = 2, channels: tuple[int, ...] = DENSE96_CHANNELS):
        super().__init__()
        c1, c2, c3, c4, c5 = channels
        self.features = nn.Sequential(
            _valid_conv_bn_relu(3, c1, kernel_size=2, stride=2),
            _valid_conv_bn_relu(c1, c1),
            _valid_conv_bn_relu(c1, c2),
            nn.MaxPool2d(2),
            _valid_conv_bn_relu(c2, c3),
            nn.MaxPool2d(2),
            _valid_conv_bn_relu(c3, c4),
            nn.MaxPool2d(2),
            _valid_conv_bn_relu(c4, c5),
            nn.MaxPool2d(2),
        )
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Conv2d(c5, num_classes, kernel_size=1)

    def dense_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes, k + 1, k + 1) for regions of (96 + 32 k) px, one per tile."""
        logits: torch.Tensor = self.head(self.dropout(self.features(x)))
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) for 96 px tiles (a larger input gives its cells' mean)."""
        return self.dense_logits(x).mean(dim=(2, 3))


# Dense96Wide: (in, out, kernel) of its valid convs per stage; a 2 x 2 max pool follows each stage.
DENSE96_WIDE_STAGES: tuple[tuple[tuple[int, int, int], ...], ...] = (
    ((32, 48, 3), (48, 64, 3), (64, 64, 1)),
    ((64, 128, 3), (128, 128, 1)),
    ((128, 256, 3), (256, 256, 1)),
    ((256, 384, 3), (384, 384, 1)),
)


class Dense96Wide(Dense96):
    """``dense96`` made deeper and wider where it is cheap, still exact under dense inference.

    The same 96 px receptive field and 32 px stride (stem 48, 46, 44, pool 22, 20, pool 10, 8,
    pool 4, 2, pool 1), with a 1 x 1 conv after the last 3 x 3 conv of every stage (four more
    layers, no change of size), 48 channels in the stem's second conv and 384 in the last stage.
    About 1.5 M parameters; dense scoring costs about 28 M multiply-adds per cell against
    ``dense96``'s 22 M.
    """

    def __init__(
        self, num_classes: int = 2, stages: tuple[tuple[tuple[int, int, int], ...], ...] = DENSE96_WIDE_STAGES
    ):
        nn.Module.__init__(self)
        layers: list[nn.Module] = [_valid_conv_bn_relu(3, stages[0][0][0], kernel_size=2, stride=2)]
        for stage in stages:
            layers += [_valid_conv_bn_relu(c_in, c_out, kernel_size=k) for c_in, c_out, k in stage]
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Conv2d(stages[-1][-1][1], num_classes, kernel_size=1)


def _valid_conv_bn_relu(
    in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, stride=stride, padding=0, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _pcamnet(num_classes: int) -> nn.Module:
    return PCamNet(num_classes=num_classes)


def _dense96(num_classes: int) -> nn.Module:
    return Dense96(num_classes=num_classes)


def _dense96_wide(num_classes: int) -> nn.Module:
    return Dense96Wide(num_classes=num_classes)


def _micronet(num_classes: int) -> nn.Module:
    return MicroNet(num_classes=num_classes)


def _resnet18(num_classes: int) -> nn.Module:
    model: nn.Module = tv_models.resnet18(weights=None, num_classes=num_classes)
    return model


def _resnet34(num_classes: int) -> nn.Module:
    model: nn.Module = tv_models.resnet34(weights=None, num_classes=num_classes)
    return model


def _resnet50(num_classes: int) -> nn.Module:
    model: nn.Module = tv_models.resnet50(weights=None, num_classes=num_classes)
    return model


def _mobilenet_v3_small(num_classes: int) -> nn.Module:
    model: nn.Module = tv_models.mobilenet_v3_small(weights=None, num_classes=num_classes)
    return model


def _mobilenet_v3_large(num_classes: int) -> nn.Module:
    model: nn.Module = tv_models.mobilenet_v3_large(weights=None, num_classes=num_classes)
    return model


def _efficientnet_b0(num_classes: int) -> nn.Module:
    model: nn.Module = tv_models.efficientnet_b0(weights=None, num_classes=num_classes)
    return model


# Name -> builder taking the number of classes. Builders never load pretrained weights.
ARCHITECTURES: dict[str, Callable[[int], nn.Module]] = {
    "dense96": _dense96,
    "dense96_wide": _dense96_wide,
    "micronet": _micronet,
    "pcamnet": _pcamnet,
    "resnet18": _resnet18,
    "resnet34": _resnet34,
    "resnet50": _resnet50,
    "mobilenet_v3_small": _mobilenet_v3_small,
    "mobilenet_v3_large": _mobilenet_v3_large,
    "efficientnet_b0": _efficientnet_b0,
}


def available_architectures() -> tuple[str, ...]:
    """Names accepted by ``build_model``, sorted."""
    return tuple(sorted(ARCHITECTURES))


def check_architecture(architecture: str) -> None:
    """Raise UnknownArchitectureError (a CheckpointError and ValueError) listing known names."""
    if architecture not in ARCHITECTURES:
        raise UnknownArchitectureError(
            f"unknown model architecture {architecture!r}; available: {', '.join(available_architectures())}"
        )


def build_model(architecture: str, num_classes: int = 2) -> nn.Module:
    """A randomly initialised classifier mapping (B, 3, H, W) tiles to (B, num_classes) logits.

    Raises UnknownArchitectureError for a name not in ``ARCHITECTURES`` and ValueError for
    num_classes < 2. Never downloads weights.
    """
    check_architecture(architecture)
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r} is out of range; need at least 2")
    return ARCHITECTURES[architecture](num_classes)
