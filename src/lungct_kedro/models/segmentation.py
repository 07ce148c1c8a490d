"""Segmentation networks built from parameters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.networks.nets import UNet

ARCHITECTURES = ("unet", "flexible_unet_resnet18")


def build_segmentation_model(model_params: Mapping[str, Any], out_channels: int) -> torch.nn.Module:
    """Build a 2D segmentation network with one input channel.

    Args:
        model_params: ``architecture``: ``unet`` (MONAI ``UNet`` built from
            ``channels``, the feature maps per level, e.g. [16, 32, 64, 128],
            ``num_res_units`` and ``dropout``; each level after the first
            halves the resolution) or ``flexible_unet_resnet18`` (MONAI
            ``FlexibleUNet`` whose encoder is the shared ResNet-18, so
            pre-trained encoder weights load into it; the other keys are
            ignored).
        out_channels: Number of classes including background.

    Raises:
        ValueError: Unknown architecture or fewer than two levels.
    """
    architecture = model_params.get("architecture", "unet")
    if architecture not in ARCHITECTURES:
        raise ValueError(f"segmentation architecture {architecture!r} is not supported; use one of {ARCHITECTURES}")
    if architecture == "flexible_unet_resnet18":
        return build_flexible_unet_resnet18(out_channels)
    channels = tuple(int(value) for value in model_params["channels"])
    if len(channels) < 2:
        raise ValueError(f"model channels need at least two levels, got {list(channels)}")
    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=out_channels,
        channels=channels,
        strides=(2,) * (len(channels) - 1),
        num_res_units=int(model_params.get("num_res_units", 2)),
        dropout=float(model_params.get("dropout", 0.0)),
    )


def build_flexible_unet_resnet18(out_channels: int) -> torch.nn.Module:
    """Build MONAI's ``FlexibleUNet`` with a 2D ResNet-18 encoder, one input channel and random weights."""
    from monai.networks.nets import FlexibleUNet

    return FlexibleUNet(in_channels=1, out_channels=out_channels, backbone="resnet18", spatial_dims=2, pretrained=False)


def load_resnet18_encoder_into_flexible_unet(
    unet: torch.nn.Module, encoder_state: Mapping[str, torch.Tensor]
) -> dict[str, Any]:
    """Copy torchvision-style ResNet-18 weights into ``unet.encoder`` where names and shapes match.

    MONAI's ResNet uses torchvision's layer names (``conv1``, ``bn1``,
    ``layer1.0.conv1`` …). In MONAI 1.6 the ``FlexibleUNet`` ResNet-18
    encoder uses parameter-free shortcuts where the resolution halves, so
    the 18 ``layerN.0.downsample.*`` tensors of the torchvision trunk have
    no counterpart and are skipped. The fully connected layer is absent from
    both.

    Args:
        unet: A network with an ``encoder`` submodule (``FlexibleUNet``).
        encoder_state: ``state_dict`` of ``build_resnet18_encoder`` (such
            as the one in ``pretrained_encoder.pt``).

    Returns:
        ``loaded`` (number of tensors copied), ``skipped`` (source keys with
        no match), ``shape_mismatch`` (keys whose shapes differ, skipped) and
        ``not_initialised`` (encoder keys that kept their random values).

    Raises:
        ValueError: Nothing matched, which means the weights are not a ResNet trunk.
    """
    target = unet.encoder.state_dict()
    matched = {key: value for key, value in encoder_state.items() if key in target and target[key].shape == value.shape}
    mismatched = sorted(key for key in encoder_state if key in target and target[key].shape != encoder_state[key].shape)
    if not matched:
        raise ValueError("no encoder tensor matched the FlexibleUNet encoder by name and shape; is this a ResNet-18 trunk?")
    unet.encoder.load_state_dict(matched, strict=False)
    return {
        "loaded": len(matched),
        "skipped": sorted(key for key in encoder_state if key not in target),
        "shape_mismatch": mismatched,
        "not_initialised": sorted(set(target) - set(matched)),
    }
