"""Image-to-image networks that restore a degraded slice: DnCNN, a residual U-Net and AOD-Net.

Every network maps a batch (n, 1, H, W) of [0, 1] slices to a batch of the
same shape. The output is not clamped, so the loss receives the raw
prediction. Clamp it to [0, 1] before display or scoring.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.networks.nets import UNet
from torch import nn

ARCHITECTURES = ("dncnn", "residual_unet", "aod_net")


class DnCNN(nn.Module):
    """Residual denoising CNN: ``out = x + net(x)``.

    ``net`` is a plain stack of 3×3 convolutions that predicts the correction
    to add to the input: the first with ReLU, the middle ones with batch
    normalisation and ReLU, the last linear. The design follows Zhang et al.,
    "Beyond a Gaussian Denoiser: Residual Learning of Deep CNN for Image
    Denoising", IEEE Transactions on Image Processing 26(7), 2017. The receptive field is
    ``2 · depth + 1`` pixels. The last layer starts at zero, so the untrained
    network returns its input and training starts from the input's PSNR.

    Args:
        depth: Number of convolution layers, at least 2.
        features: Feature maps of the hidden layers.
        batch_norm: Batch normalisation in the middle layers.

    Raises:
        ValueError: ``depth`` is below 2 or ``features`` below 1.
    """

    def __init__(self, depth: int = 8, features: int = 32, batch_norm: bool = True) -> None:
        super().__init__()
        if depth < 2 or features < 1:
            raise ValueError(f"DnCNN needs depth >= 2 and features >= 1, got depth={depth}, features={features}")
        layers: list[nn.Module] = [nn.Conv2d(1, features, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers.append(nn.Conv2d(features, features, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(features))
            layers.append(nn.ReLU(inplace=True))
        last = nn.Conv2d(features, 1, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        layers.append(last)
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResidualUNet(nn.Module):
    """A MONAI ``UNet`` with a global residual connection, ``out = x + head(unet(x))``.

    Its strided levels give a receptive field of most of a 128 px slice, which
    a global fault such as haze or an exposure error needs. The U-Net returns
    ``channels[0]`` feature maps and ``head`` is a 1×1 convolution that starts
    at zero, so the untrained network returns its input.

    Args:
        channels: Feature maps per level; each level after the first halves
            the resolution.
        num_res_units: Residual units per block.
        dropout: Dropout probability.
    """

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64, 128), num_res_units: int = 1, dropout: float = 0.0):
        super().__init__()
        if len(channels) < 2:
            raise ValueError(f"residual_unet needs at least 2 levels in channels, got {list(channels)}")
        self.unet = UNet(
            spatial_dims=2,
            in_channels=1,
            out_channels=channels[0],
            channels=tuple(channels),
            strides=(2,) * (len(channels) - 1),
            num_res_units=num_res_units,
            dropout=dropout,
        )
        self.head = nn.Conv2d(channels[0], 1, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.head(self.unet(x))


class AODNet(nn.Module):
    """All-in-One Dehazing Network for one-channel slices.

    Li et al., "AOD-Net: All-in-One Dehazing Network", ICCV 2017, rewrite the
    scattering model ``I = J · t + A · (1 − t)`` as ``J = K(I) · I − K(I) + b``,
    where one map ``K`` folds the transmission and the airlight together and
    ``b`` is a constant bias (1 in the paper). Five small convolutions estimate
    ``K``: kernel sizes 1, 3, 5, 7 and 3, each later layer reading the
    concatenated outputs of earlier ones (layer 3 reads layers 1 and 2,
    layer 4 reads 2 and 3, layer 5 reads all four). The paper uses 3 feature
    maps per layer for RGB; ``features`` sets it here.

    Args:
        features: Feature maps per estimation layer.
        bias: The constant ``b`` of the output formula.
    """

    def __init__(self, features: int = 3, bias: float = 1.0) -> None:
        super().__init__()
        if features < 1:
            raise ValueError(f"aod_net needs features >= 1, got {features}")
        self.conv1 = nn.Conv2d(1, features, 1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)
        self.conv3 = nn.Conv2d(2 * features, features, 5, padding=2)
        self.conv4 = nn.Conv2d(2 * features, features, 7, padding=3)
        self.conv5 = nn.Conv2d(4 * features, 1, 3, padding=1)
        self.bias = bias

    def estimate_k(self, x: torch.Tensor) -> torch.Tensor:
        """Estimate the map ``K(I)`` of shape (n, 1, H, W)."""
        x1 = torch.relu(self.conv1(x))
        x2 = torch.relu(self.conv2(x1))
        x3 = torch.relu(self.conv3(torch.cat([x1, x2], dim=1)))
        x4 = torch.relu(self.conv4(torch.cat([x2, x3], dim=1)))
        return torch.relu(self.conv5(torch.cat([x1, x2, x3, x4], dim=1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.estimate_k(x)
        return torch.relu(k * x - k + self.bias)


def build_enhancement_model(params: Mapping[str, Any]) -> nn.Module:
    """Build the restoration network named by ``params["architecture"]``.

    Args:
        params: The ``dehazing.model`` block: ``architecture`` (one of
            ``ARCHITECTURES``) and its settings: ``dncnn``: ``depth``,
            ``features``, ``batch_norm``; ``residual_unet``: ``channels``,
            ``num_res_units``, ``dropout``; ``aod_net``: ``aod_features``.

    Raises:
        ValueError: The architecture is unknown.
    """
    architecture = params.get("architecture")
    if architecture == "dncnn":
        return DnCNN(int(params.get("depth", 8)), int(params.get("features", 32)), bool(params.get("batch_norm", True)))
    if architecture == "residual_unet":
        return ResidualUNet(
            tuple(int(c) for c in params.get("channels", (16, 32, 64, 128))),
            int(params.get("num_res_units", 1)),
            float(params.get("dropout", 0.0)),
        )
    if architecture == "aod_net":
        return AODNet(int(params.get("aod_features", 3)))
    raise ValueError(f"dehazing.model.architecture {architecture!r} is not supported; use one of {ARCHITECTURES}")
