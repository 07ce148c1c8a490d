"""Segmentation networks built from parameters.

Every architecture is a 2D MONAI network with one input channel:

* ``unet``: ``UNet`` with residual units;
* ``swin_unetr``: ``SwinUNETR`` (A. Hatamizadeh et al., "Swin UNETR: Swin
  Transformers for semantic segmentation of brain tumors in MRI images",
  BrainLes 2021) with ``spatial_dims=2``;
* ``dynunet``: ``DynUNet``, the nnU-Net style network, optionally with deep
  supervision heads;
* ``flexible_unet_resnet18``: ``FlexibleUNet`` whose encoder is the shared
  ResNet-18, so pre-trained encoder weights load into it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.networks.nets import DynUNet, FlexibleUNet, SwinUNETR, UNet

ARCHITECTURES = ("unet", "swin_unetr", "dynunet", "flexible_unet_resnet18")

#: The slice side must be a multiple of this many pixels for each architecture.
SIZE_MULTIPLE = {"swin_unetr": 32, "flexible_unet_resnet18": 32}
#: SwinUNETR instance-normalises its 1/32-resolution features, which needs more than one pixel.
MIN_SIZE = {"swin_unetr": 64}

SWIN_UNETR_DEFAULTS: dict[str, Any] = {"feature_size": 24, "depths": [2, 2, 2, 2], "num_heads": [3, 6, 12, 24]}
DYNUNET_DEFAULTS: dict[str, Any] = {"filters": [16, 32, 64, 128], "deep_supervision": False, "deep_supervision_levels": 2}


def build_segmentation_model(model_params: Mapping[str, Any], out_channels: int) -> torch.nn.Module:
    """Build a 2D segmentation network with one input channel.

    Args:
        model_params: ``architecture`` (one of ``ARCHITECTURES``, default
            ``unet``) and its settings. ``unet`` reads ``channels`` (feature
            maps per level, e.g. [16, 32, 64, 128]; each level after the
            first halves the resolution), ``num_res_units`` and ``dropout``.
            ``swin_unetr`` reads the mapping ``swin_unetr`` (``feature_size``,
            a multiple of 12; ``depths`` and ``num_heads``, four stages each).
            ``dynunet`` reads ``dynunet`` (``filters`` per level, at least
            two; ``deep_supervision``; ``deep_supervision_levels``).
            ``flexible_unet_resnet18`` has no settings.
        out_channels: Number of classes including background.

    Raises:
        ValueError: Unknown architecture or invalid settings.
    """
    architecture = model_params.get("architecture", "unet")
    if architecture not in ARCHITECTURES:
        raise ValueError(f"segmentation architecture {architecture!r} is not supported; use one of {ARCHITECTURES}")
    if architecture == "flexible_unet_resnet18":
        return build_flexible_unet_resnet18(out_channels)
    if architecture == "swin_unetr":
        return build_swin_unetr(model_params.get("swin_unetr") or {}, out_channels)
    if architecture == "dynunet":
        return build_dynunet(model_params.get("dynunet") or {}, out_channels)
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


def build_swin_unetr(settings: Mapping[str, Any], out_channels: int) -> torch.nn.Module:
    """Build MONAI's ``SwinUNETR`` in 2D (patch size 2, window size 7).

    Raises:
        ValueError: ``feature_size`` is not a multiple of 12, or ``depths``
            and ``num_heads`` do not both have four stages.
    """
    options = {**SWIN_UNETR_DEFAULTS, **settings}
    feature_size = int(options["feature_size"])
    depths = [int(value) for value in options["depths"]]
    num_heads = [int(value) for value in options["num_heads"]]
    if feature_size % 12:
        raise ValueError(f"segmentation.model.swin_unetr.feature_size must be a multiple of 12, got {feature_size}")
    if len(depths) != 4 or len(num_heads) != 4:
        raise ValueError(
            "segmentation.model.swin_unetr.depths and num_heads need four stages each, "
            f"got depths {depths} and num_heads {num_heads}"
        )
    return SwinUNETR(
        in_channels=1,
        out_channels=out_channels,
        spatial_dims=2,
        feature_size=feature_size,
        depths=depths,
        num_heads=num_heads,
    )


def build_dynunet(settings: Mapping[str, Any], out_channels: int) -> torch.nn.Module:
    """Build MONAI's ``DynUNet`` in 2D: 3×3 kernels, full resolution at the first level, then stride 2.

    With ``deep_supervision``, the network in training mode returns the
    final logits stacked with ``deep_supervision_levels`` lower-resolution
    heads upsampled to the input size, shape (n, 1 + levels, classes, H, W).
    In evaluation mode it returns the final logits only.

    Raises:
        ValueError: Fewer than two levels, or a number of deep supervision
            heads outside [1, levels − 2].
    """
    options = {**DYNUNET_DEFAULTS, **settings}
    filters = [int(value) for value in options["filters"]]
    if len(filters) < 2:
        raise ValueError(f"segmentation.model.dynunet.filters needs at least two levels, got {filters}")
    deep_supervision = bool(options["deep_supervision"])
    levels = int(options["deep_supervision_levels"])
    if deep_supervision and not 1 <= levels <= len(filters) - 2:
        raise ValueError(
            f"segmentation.model.dynunet.deep_supervision_levels must lie in [1, {len(filters) - 2}] for "
            f"{len(filters)} levels of filters, got {levels}"
        )
    strides = [1] + [2] * (len(filters) - 1)
    return DynUNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=out_channels,
        kernel_size=[3] * len(filters),
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=filters,
        deep_supervision=deep_supervision,
        deep_supr_num=levels if deep_supervision else 1,
    )


def build_flexible_unet_resnet18(out_channels: int) -> torch.nn.Module:
    """Build MONAI's ``FlexibleUNet`` with a 2D ResNet-18 encoder, one input channel and random weights."""
    return FlexibleUNet(in_channels=1, out_channels=out_channels, backbone="resnet18", spatial_dims=2, pretrained=False)


def check_image_size(model_params: Mapping[str, Any], image_size: int) -> None:
    """Check that slices of ``image_size`` pixels fit the architecture.

    The size must be a multiple of 32 px for ``swin_unetr`` and
    ``flexible_unet_resnet18``, because they halve the resolution five
    times. For ``unet`` and ``dynunet`` it must be a multiple of 2 to the
    power of their number of downsampling levels. ``swin_unetr`` also needs
    at least 64 px.

    Raises:
        ValueError: The size does not fit the architecture.
    """
    architecture = model_params.get("architecture", "unet")
    if architecture == "unet":
        multiple = 2 ** (len(model_params["channels"]) - 1)
    elif architecture == "dynunet":
        multiple = 2 ** (len({**DYNUNET_DEFAULTS, **(model_params.get("dynunet") or {})}["filters"]) - 1)
    else:
        multiple = SIZE_MULTIPLE[architecture]
    if image_size < MIN_SIZE.get(architecture, 0):
        raise ValueError(
            f"segmentation architecture {architecture!r} needs slices of at least {MIN_SIZE[architecture]} px, "
            f"but the slices are {image_size} px; raise ingestion.image_size or choose another architecture"
        )
    if image_size % multiple:
        raise ValueError(
            f"segmentation architecture {architecture!r} needs a slice size that is a multiple of {multiple} px, "
            f"but the slices are {image_size} px; set ingestion.image_size to a multiple of {multiple} "
            "or choose another architecture"
        )


def final_logits(output: torch.Tensor) -> torch.Tensor:
    """Return the final logits of a network output, dropping deep supervision heads.

    In training mode, ``DynUNet`` with deep supervision returns a 5-D tensor
    (n, heads, classes, H, W) whose first head is the final output. Every
    other network returns (n, classes, H, W).
    """
    return output[:, 0] if output.ndim == 5 else output


def bottleneck_module_name(model: torch.nn.Module, model_params: Mapping[str, Any]) -> tuple[str, int]:
    """Name the submodule whose output is the deepest encoder feature map, and its channels.

    The multi-task classification head pools this feature map.

    Returns:
        The dotted module name (for ``model.get_submodule``) and its output
        channels. For ``flexible_unet_resnet18`` the module is the encoder,
        whose output is a list of feature maps; the last one is the deepest.
    """
    architecture = model_params.get("architecture", "unet")
    if architecture == "swin_unetr":
        feature_size = int({**SWIN_UNETR_DEFAULTS, **(model_params.get("swin_unetr") or {})}["feature_size"])
        return "encoder10", 16 * feature_size
    if architecture == "dynunet":
        return "bottleneck", int({**DYNUNET_DEFAULTS, **(model_params.get("dynunet") or {})}["filters"][-1])
    if architecture == "flexible_unet_resnet18":
        return "encoder", 512
    # MONAI UNet nests Sequential(down, SkipConnection(inner), up) once per level; the innermost
    # SkipConnection wraps the bottom layer.
    name, block = "model", model.model
    for _ in range(len(model_params["channels"]) - 1):
        name, block = f"{name}.1.submodule", block[1].submodule
    return name, int(model_params["channels"][-1])


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
