"""Image encoders shared by classification, pre-training and transfer.

Every task that transfers weights uses the same backbone, so that encoder
weights saved by one pipeline load into another by name.
"""

from __future__ import annotations

import torch
from torchvision.models import resnet18

ENCODER_FEATURES = {"resnet18": 512}


def build_resnet18_encoder(in_channels: int = 1) -> torch.nn.Module:
    """Build a torchvision ResNet-18 trunk without its classifier.

    Weights start random (nothing is downloaded). The first convolution takes
    ``in_channels`` channels, so grayscale CT needs no channel copying, and
    ``fc`` is an identity, so the output is the 512-dimensional pooled
    feature vector.
    """
    network = resnet18(weights=None)
    if in_channels != 3:
        network.conv1 = torch.nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    network.fc = torch.nn.Identity()
    return network
