"""SconesNet: the delivery-vehicle classifier's network, shared by train.py and inference.py.

train.py copies this file into the model artifact's code/ folder next to inference.py, so
the served model is built by exactly the code that trained it. Imports only torch.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

IMAGE_SIZE = 32
ARCHITECTURE = "SconesNet"
# The first layer whitens 2x2 patches (12 numbers each: 2 x 2 pixels x 3 colours). Its
# filters are fixed, computed once from the training images (init_whitening), so the net
# starts from decorrelated, equal-variance inputs instead of learning that from 800 images
# (the airbench recipe for small CIFAR sets). 12 filters and their negatives: 24 channels.
WHITENING_PATCH = 2
WHITENING_FILTERS = 3 * WHITENING_PATCH ** 2
WHITENING_EPSILON = 5e-4


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
    """A compact ResNet-9-style net for 32x32 RGB: a fixed patch-whitening layer, then three
    stages at 15, 7 and 3 pixels.

    Pooling right after the whitening keeps the cost a few MFLOPs per image. `width` sets
    the stages' channels: 2x, 4x and 8x of it. forward() is the plain logits of one view;
    test_time_logits() adds the mirror view (what is served).
    """

    def __init__(self, num_classes: int = 2, width: int = 32):
        super().__init__()
        if width < 4 or num_classes < 2:
            raise ValueError(f"SconesNet needs width >= 4 and num_classes >= 2 "
                             f"(got width={width}, num_classes={num_classes})")
        self.width = width
        self.num_classes = num_classes
        # Weights fixed (set by init_whitening, saved in the state_dict); the bias learns.
        whiten = nn.Conv2d(3, 2 * WHITENING_FILTERS, kernel_size=WHITENING_PATCH, padding=0,
                           bias=True)
        whiten.weight.requires_grad_(False)
        self.features = nn.Sequential(
            whiten,                                # 31x31
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),                       # 15x15
            conv_bn(2 * WHITENING_FILTERS, 2 * width),
            Residual(2 * width),
            conv_bn(2 * width, 4 * width),
            nn.MaxPool2d(2),                       # 7x7
            Residual(4 * width),
            conv_bn(4 * width, 8 * width),
            nn.MaxPool2d(2),                       # 3x3
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(8 * width, num_classes)

    @property
    def whiten(self) -> nn.Conv2d:
        return self.features[0]

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor, epsilon: float = WHITENING_EPSILON) -> None:
        """Set the whitening filters from normalised training images (N x 3 x H x W):
        eigenvectors of the 2x2 patch covariance, scaled by 1/sqrt(eigenvalue + epsilon)."""
        patches = images.float().unfold(2, WHITENING_PATCH, 1).unfold(3, WHITENING_PATCH, 1)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, WHITENING_FILTERS).double()
        patches = patches - patches.mean(dim=0)
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + epsilon)[:, None])
        filters = filters.reshape(WHITENING_FILTERS, 3, WHITENING_PATCH, WHITENING_PATCH).float()
        self.whiten.weight.copy_(torch.cat((filters, -filters)))
        self.whiten.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def test_time_logits(self, x: torch.Tensor) -> torch.Tensor:
        """N x 3 x H x W -> N x views x classes: each image and its mirror image (training
        flips images at random, so both views are ones the net has learned). Both views go
        through in one forward pass: for a single image the per-layer call overhead, not the
        arithmetic, is most of the time."""
        n = len(x)
        both = self(torch.cat((x, x.flip(3))).contiguous(memory_format=torch.channels_last))
        return torch.stack((both[:n], both[n:]), dim=1)

    def for_inference(self) -> "SconesNet":
        """An eval-mode copy with every BatchNorm folded into the convolution before it:
        the same function to float rounding, with a third fewer layers to run per image."""
        fused = copy.deepcopy(self).eval()
        for block in list(fused.modules()):
            if isinstance(block, nn.Sequential) and len(block) == 3 \
                    and isinstance(block[0], nn.Conv2d) and isinstance(block[1], nn.BatchNorm2d):
                block[0] = fuse_conv_bn_eval(block[0], block[1])
                block[1] = nn.Identity()
        return fused


def normalise(images_uint8_nhwc: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 N x H x W x 3 -> float N x 3 x H x W, scaled to [0, 1] then standardised per channel.

    The result is channels_last in memory (a permuted view made contiguous that way), which
    is the faster layout for convolutions on CPU.
    """
    x = images_uint8_nhwc.permute(0, 3, 1, 2).float().div_(255.0)
    x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    return x.contiguous(memory_format=torch.channels_last)
