"""SconesNet: the delivery-vehicle classifier's network, shared by train.py and inference.py.

train.py copies this file into the model artifact's code/ folder next to inference.py, so
the served model is built by exactly the code that trained it. Imports only torch.
"""
from __future__ import annotations

import torch
from torch import nn

IMAGE_SIZE = 32
ARCHITECTURE = "SconesNet"


def conv_bn(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SconesNet(nn.Module):
    """A compact ResNet-9-style net for 32x32 RGB: three stages at 16, 8 and 4 pixels.

    Downsampling right after the stem keeps the cost a few MFLOPs per image, so 30 epochs
    on ~800 images train in well under a minute on two CPU cores. `width` is the channel
    count of the stem; stages use 2x, 4x and 8x of it.
    """

    def __init__(self, num_classes: int = 2, width: int = 32):
        super().__init__()
        if width < 4 or num_classes < 2:
            raise ValueError(f"SconesNet needs width >= 4 and num_classes >= 2 "
                             f"(got width={width}, num_classes={num_classes})")
        self.width = width
        self.num_classes = num_classes
        self.features = nn.Sequential(
            conv_bn(3, width),                     # 32x32
            nn.MaxPool2d(2),                       # 16x16
            conv_bn(width, 2 * width),
            Residual(2 * width),
            conv_bn(2 * width, 4 * width),
            nn.MaxPool2d(2),                       # 8x8
            Residual(4 * width),
            conv_bn(4 * width, 8 * width),
            nn.MaxPool2d(2),                       # 4x4
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(8 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def normalise(images_uint8_nhwc: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 N x H x W x 3 -> float N x 3 x H x W, scaled to [0, 1] then standardised per channel.

    The result is channels_last in memory (a permuted view made contiguous that way), which
    is the faster layout for convolutions on CPU.
    """
    x = images_uint8_nhwc.permute(0, 3, 1, 2).float().div_(255.0)
    x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    return x.contiguous(memory_format=torch.channels_last)
