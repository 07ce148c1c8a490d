"""Slice classifiers: a shared image encoder followed by a linear head.

Both architectures expose the trunk as ``encoder``, so weights saved for the
shared ResNet-18 trunk (``build_resnet18_encoder``) load into
``classifier.encoder`` by name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torchvision.models import VisionTransformer

from lungct_kedro.models.encoders import ENCODER_FEATURES, build_resnet18_encoder

ARCHITECTURES = ("resnet18", "vit_b8")

#: Patch side of the ``vit_b8`` architecture, in pixels.
VIT_PATCH_SIZE = 8


class SliceClassifier(torch.nn.Module):
    """An image encoder returning one feature vector per slice, and a linear head.

    Attributes:
        encoder: Maps (n, channels, H, W) images to (n, features) vectors.
        head: Linear layer from the features to one logit per class.
    """

    def __init__(self, encoder: torch.nn.Module, n_features: int, n_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = torch.nn.Linear(n_features, n_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return class logits of shape (n, n_classes)."""
        return self.head(self.encoder(images))


def build_vit_b8_encoder(
    image_size: int, in_channels: int, num_layers: int, num_heads: int, hidden_dim: int, mlp_dim: int
) -> torch.nn.Module:
    """Build a torchvision ``VisionTransformer`` with 8 px patches and no classifier.

    The patch embedding takes ``in_channels`` channels, so grayscale CT needs
    no channel copying. The output is the class-token vector of
    ``hidden_dim`` values. Weights start random.

    Raises:
        ValueError: ``image_size`` is not a multiple of the patch size, or
            ``hidden_dim`` is not a multiple of ``num_heads``.
    """
    if image_size % VIT_PATCH_SIZE:
        raise ValueError(f"vit_b8 needs an input size that is a multiple of {VIT_PATCH_SIZE} px, got {image_size}")
    if hidden_dim % num_heads:
        raise ValueError(f"vit hidden_dim ({hidden_dim}) must be a multiple of num_heads ({num_heads})")
    network = VisionTransformer(
        image_size=image_size,
        patch_size=VIT_PATCH_SIZE,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        mlp_dim=mlp_dim,
    )
    if in_channels != 3:
        projection = torch.nn.Conv2d(in_channels, hidden_dim, kernel_size=VIT_PATCH_SIZE, stride=VIT_PATCH_SIZE)
        # Same initialisation as torchvision gives its own patch embedding.
        fan_in = in_channels * VIT_PATCH_SIZE * VIT_PATCH_SIZE
        torch.nn.init.trunc_normal_(projection.weight, std=math.sqrt(1 / fan_in))
        torch.nn.init.zeros_(projection.bias)
        network.conv_proj = projection
    network.heads = torch.nn.Identity()
    return network


def build_classifier(
    model_params: Mapping[str, Any], n_classes: int, image_size: int, in_channels: int = 1
) -> SliceClassifier:
    """Build the classifier named by ``model_params["architecture"]``.

    Args:
        model_params: ``architecture`` (``resnet18`` or ``vit_b8``); for
            ``vit_b8`` also ``num_layers``, ``num_heads``, ``hidden_dim``
            and ``mlp_dim``.
        n_classes: Number of output logits (at least 2).
        image_size: Side of the square network input in pixels.
        in_channels: 1 for grayscale input, 3 for grayscale copied to RGB.

    Raises:
        ValueError: Unknown architecture, fewer than 2 classes, or invalid
            transformer sizes.
    """
    architecture = model_params.get("architecture", "resnet18")
    if n_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {n_classes}")
    if architecture == "resnet18":
        return SliceClassifier(build_resnet18_encoder(in_channels), ENCODER_FEATURES["resnet18"], n_classes)
    if architecture == "vit_b8":
        vit = model_params.get("vit", {})
        hidden_dim = int(vit.get("hidden_dim", 768))
        encoder = build_vit_b8_encoder(
            image_size,
            in_channels,
            num_layers=int(vit.get("num_layers", 12)),
            num_heads=int(vit.get("num_heads", 12)),
            hidden_dim=hidden_dim,
            mlp_dim=int(vit.get("mlp_dim", 3072)),
        )
        return SliceClassifier(encoder, hidden_dim, n_classes)
    raise ValueError(f"classification architecture {architecture!r} is not supported; use one of {ARCHITECTURES}")


def load_encoder_state(classifier: SliceClassifier, state_dict: Mapping[str, torch.Tensor]) -> int:
    """Copy pre-trained encoder weights into ``classifier.encoder`` and return how many tensors loaded.

    Every key of the encoder must be present with the same shape (strict
    loading), so a partial or mismatched checkpoint fails instead of
    leaving some layers random.

    Raises:
        ValueError: Keys are missing or unexpected, or a shape differs.
    """
    own = classifier.encoder.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(key for key in set(own) & set(state_dict) if own[key].shape != state_dict[key].shape)
    if missing or unexpected or mismatched:
        raise ValueError(
            f"encoder weights do not fit the classifier encoder: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, shape mismatch {mismatched[:5]}; pre-train the same architecture and in_channels"
        )
    classifier.encoder.load_state_dict(state_dict)
    return len(own)


def freeze_classifier_encoder(classifier: SliceClassifier) -> None:
    """Stop gradients to ``classifier.encoder`` and put it in eval mode (frozen batch-norm statistics).

    ``Module.train()`` switches the encoder back to training mode, so a
    training step must call ``classifier.encoder.eval()`` again after it.
    """
    for parameter in classifier.encoder.parameters():
        parameter.requires_grad_(False)
    classifier.encoder.eval()
