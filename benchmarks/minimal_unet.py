"""A plain MONAI U-Net trained by a minimal loop, the reference of the segmentation methods benchmark.

Nothing from the project's training code is used: the caller passes slice
arrays (read straight from the slice store), and this module trains MONAI's
``UNet`` with ``DiceCELoss`` and SGD until a budget of process CPU time is
spent. The comparison then shows what the pipeline's own training adds or
costs (validation, checkpoint selection, augmentation, other networks).

Choices, kept deliberately plain:

* no augmentation, no validation, no checkpoint selection: the final weights
  are returned;
* batches drawn from a shuffled pass over the training slices, reshuffled at
  each pass;
* SGD with Nesterov momentum, the learning rate decaying as
  ``lr · (1 − spent / budget) ** 0.9`` with the spent share of the CPU budget;
* the CPU budget counts process CPU time (all threads), as measured by
  ``time.process_time``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.networks.nets import UNet

POLY_POWER = 0.9


@dataclass
class MinimalRun:
    """Outcome of one minimal training run.

    Attributes:
        iterations: Optimiser steps taken within the budget.
        cpu_seconds: Process CPU time spent in the loop.
        final_loss: Loss of the last batch.
    """

    iterations: int
    cpu_seconds: float
    final_loss: float


def build_plain_unet(channels: Sequence[int], num_res_units: int, num_classes: int) -> UNet:
    """Build a 2D MONAI ``UNet`` with one input channel and stride 2 between levels."""
    channels = tuple(int(value) for value in channels)
    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=num_classes,
        channels=channels,
        strides=(2,) * (len(channels) - 1),
        num_res_units=num_res_units,
    )


def train_minimal_unet(
    images: np.ndarray,
    masks: np.ndarray,
    *,
    channels: Sequence[int],
    num_res_units: int,
    num_classes: int,
    batch_size: int,
    learning_rate: float,
    momentum: float,
    weight_decay: float,
    cpu_budget_s: float,
    seed: int,
) -> tuple[UNet, MinimalRun]:
    """Train a plain U-Net on ``images`` and ``masks`` until ``cpu_budget_s`` of CPU time is spent.

    Args:
        images: (n, H, W) intensities in [0, 1].
        masks: (n, H, W) class maps with values below ``num_classes``.
        channels: Feature maps per level, for example [16, 32, 64, 128].
        num_res_units: Residual units per level.
        num_classes: Output classes including background.
        batch_size: Slices per step (all slices when there are fewer).
        learning_rate: Initial SGD learning rate.
        momentum: Nesterov momentum.
        weight_decay: L2 weight decay.
        cpu_budget_s: Process CPU seconds to train for; at least one step
            is taken.
        seed: Seed of the weights and of the batch order.

    Returns:
        The model (on the CPU, in eval mode) and the run's counts.

    Raises:
        ValueError: No slice is given, or shapes differ, or a mask value is
            not below ``num_classes``.
    """
    images = np.asarray(images, dtype=np.float32)
    masks = np.asarray(masks, dtype=np.int64)
    if images.ndim != 3 or images.shape != masks.shape or len(images) == 0:
        raise ValueError(f"need (n, H, W) images and masks of one shape with n > 0, got {images.shape} and {masks.shape}")
    if masks.max() >= num_classes:
        raise ValueError(f"mask value {int(masks.max())} needs at least {int(masks.max()) + 1} classes, got {num_classes}")

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = build_plain_unet(channels, num_res_units, num_classes)
    criterion = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=learning_rate, momentum=momentum, weight_decay=weight_decay, nesterov=True
    )
    image_tensor = torch.from_numpy(images)[:, None]
    mask_tensor = torch.from_numpy(masks)[:, None]
    batch_size = min(batch_size, len(images))

    started = time.process_time()
    iterations, loss_value, order, position = 0, float("nan"), torch.randperm(len(images), generator=generator), 0
    model.train()
    while True:
        spent = time.process_time() - started
        if iterations > 0 and spent >= cpu_budget_s:
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate * max(1.0 - spent / cpu_budget_s, 0.0) ** POLY_POWER
        if position + batch_size > len(images):
            order, position = torch.randperm(len(images), generator=generator), 0
        rows = order[position : position + batch_size]
        position += batch_size

        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(image_tensor[rows]), mask_tensor[rows])
        loss.backward()
        optimizer.step()
        iterations += 1
        loss_value = float(loss.item())
    model.eval()
    return model, MinimalRun(iterations, time.process_time() - started, loss_value)


@torch.no_grad()
def predict_minimal_unet(model: UNet, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Predict uint8 class maps (n, H, W) for (n, H, W) intensities in [0, 1]."""
    model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.asarray(images[start : start + batch_size], dtype=np.float32))[:, None]
        outputs.append(model(batch).argmax(dim=1).to(torch.uint8).numpy())
    if not outputs:
        return np.zeros((0, *np.shape(images)[1:]), dtype=np.uint8)
    return np.concatenate(outputs)
