"""Segmentation networks built from parameters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.networks.nets import UNet

ARCHITECTURES = ("unet",)


def build_segmentation_model(model_params: Mapping[str, Any], out_channels: int) -> torch.nn.Module:
    """Build a 2D segmentation network with one input channel.

    Args:
        model_params: ``architecture`` (``unet``), ``channels`` (feature
            maps per level, e.g. [16, 32, 64, 128]), ``num_res_units`` and
            ``dropout``. Each level after the first halves the resolution.
        out_channels: Number of classes including background.

    Raises:
        ValueError: Unknown architecture or fewer than two levels.
    """
    architecture = model_params.get("architecture", "unet")
    if architecture not in ARCHITECTURES:
        raise ValueError(f"segmentation architecture {architecture!r} is not supported; use one of {ARCHITECTURES}")
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
