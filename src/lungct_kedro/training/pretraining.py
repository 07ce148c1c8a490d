"""Self-supervised pre-training of the shared encoder: CT augmentations, collapse watch, training.

The methods themselves (SimSiam, BYOL, SimCLR) live in
``lungct_kedro.models.ssl``; this module feeds them two augmented views of
each train slice through the shared loop (``train_iterations``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lungct_kedro.datasets.slice_store import SliceStore
from lungct_kedro.models.ssl import (
    SiameseModel,
    build_ssl_model,
    embedding_std,
    mask_pooled_features,
    region_agreement_loss,
    resnet_feature_map,
)
from lungct_kedro.training.classification import build_optimizer, normalisation_statistics
from lungct_kedro.training.data import endless_store_batches, read_slices
from lungct_kedro.training.device import seed_everything, select_device
from lungct_kedro.training.loop import TrainingResult, train_iterations

logger = logging.getLogger(__name__)


# ---------- augmentation ----------


@dataclass(frozen=True)
class ViewAugmentation:
    """Random transforms that make one view of a lung-windowed slice.

    Attributes:
        output_size: Side of the view in pixels.
        crop_scale: (min, max) fraction of the slice area kept by the random resized crop.
        crop_ratio: (min, max) aspect ratio of the crop.
        flip_probability: Chance of a flip, per axis.
        rotate_degrees: Rotations are drawn from ±rotate_degrees.
        level_jitter: Window level shift, drawn from ±level_jitter, in units of the window width.
        width_jitter: Window width factor, drawn from [1 − width_jitter, 1 + width_jitter].
        noise_std: Maximum standard deviation of additive Gaussian noise on [0, 1] intensities.
        blur_probability: Chance of a Gaussian blur per slice.
        blur_sigma: (min, max) blur standard deviation in pixels of the view.
    """

    output_size: int
    crop_scale: tuple[float, float] = (0.4, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 4 / 3)
    flip_probability: float = 0.5
    rotate_degrees: float = 15.0
    level_jitter: float = 0.1
    width_jitter: float = 0.2
    noise_std: float = 0.03
    blur_probability: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 1.5)


def build_view_augmentation(params: Mapping[str, Any]) -> ViewAugmentation:
    """Read ``pretraining.input_size`` and ``pretraining.augmentation`` into a ``ViewAugmentation``.

    Raises:
        ValueError: A range is reversed or outside its valid interval.
    """
    augmentation = params["augmentation"]
    settings = ViewAugmentation(
        output_size=int(params["input_size"]),
        crop_scale=tuple(float(v) for v in augmentation["crop_scale"]),
        crop_ratio=tuple(float(v) for v in augmentation["crop_ratio"]),
        flip_probability=float(augmentation["flip_probability"]),
        rotate_degrees=float(augmentation["rotate_degrees"]),
        level_jitter=float(augmentation["level_jitter"]),
        width_jitter=float(augmentation["width_jitter"]),
        noise_std=float(augmentation["noise_std"]),
        blur_probability=float(augmentation["blur_probability"]),
        blur_sigma=tuple(float(v) for v in augmentation["blur_sigma"]),
    )
    low, high = settings.crop_scale
    if not 0 < low <= high <= 1:
        raise ValueError(f"pretraining.augmentation.crop_scale must satisfy 0 < min <= max <= 1, got {[low, high]}")
    if not 0 < settings.crop_ratio[0] <= settings.crop_ratio[1]:
        raise ValueError(f"pretraining.augmentation.crop_ratio must satisfy 0 < min <= max, got {settings.crop_ratio}")
    if not 0 <= settings.width_jitter < 1:
        raise ValueError(f"pretraining.augmentation.width_jitter must lie in [0, 1), got {settings.width_jitter}")
    if not 0 <= settings.blur_sigma[0] <= settings.blur_sigma[1]:
        raise ValueError(f"pretraining.augmentation.blur_sigma must satisfy 0 <= min <= max, got {settings.blur_sigma}")
    return settings


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _geometric_grid(n: int, size: int, settings: ViewAugmentation, generator: torch.Generator) -> torch.Tensor:
    """Sampling grid of one random resized crop + rotation + flips per slice, in normalised coordinates."""
    area = _uniform(n, *settings.crop_scale, generator)
    log_ratio = _uniform(n, math.log(settings.crop_ratio[0]), math.log(settings.crop_ratio[1]), generator)
    ratio = torch.exp(log_ratio)
    # Half-sides of the crop in normalised units (1 = the whole slice), clipped to the slice.
    half_x = torch.sqrt(area * ratio).clamp(max=1.0)
    half_y = torch.sqrt(area / ratio).clamp(max=1.0)
    centre_x = (torch.rand(n, generator=generator) * 2 - 1) * (1 - half_x)
    centre_y = (torch.rand(n, generator=generator) * 2 - 1) * (1 - half_y)
    angles = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(settings.rotate_degrees)
    flip_x = torch.where(torch.rand(n, generator=generator) < settings.flip_probability, -1.0, 1.0)
    flip_y = torch.where(torch.rand(n, generator=generator) < settings.flip_probability, -1.0, 1.0)
    cos, sin = torch.cos(angles), torch.sin(angles)
    # input = crop(rotation @ flip @ output): the rotation turns the view inside the crop window.
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = half_x * cos * flip_x
    theta[:, 0, 1] = -half_x * sin * flip_y
    theta[:, 1, 0] = half_y * sin * flip_x
    theta[:, 1, 1] = half_y * cos * flip_y
    theta[:, 0, 2] = centre_x
    theta[:, 1, 2] = centre_y
    return F.affine_grid(theta, [n, 1, size, size], align_corners=False)


def _gaussian_blur(images: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Blur each slice with its own sigma (pixels) by separable convolution; sigma 0 leaves it unchanged."""
    n, _, height, width = images.shape
    radius = max(int(math.ceil(3 * float(sigmas.max()))), 1)
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    sigmas = sigmas.to(images.device).clamp_min(1e-3)[:, None]
    kernels = torch.exp(-0.5 * (offsets[None] / sigmas) ** 2)
    kernels = kernels / kernels.sum(dim=1, keepdim=True)
    stacked = images.reshape(1, n, height, width)
    stacked = F.pad(stacked, (radius, radius, radius, radius), mode="reflect")
    stacked = F.conv2d(stacked, kernels.view(n, 1, 1, -1), groups=n)
    stacked = F.conv2d(stacked, kernels.view(n, 1, -1, 1), groups=n)
    return stacked.reshape(n, 1, height, width)


def augment_view(
    images: torch.Tensor, settings: ViewAugmentation, generator: torch.Generator, masks: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Make one random view of each slice: geometry, window jitter, blur and noise.

    Window jitter maps the lung-windowed intensity ``x`` to
    ``(x − 0.5 − level)/width + 0.5``, clipped to [0, 1]. On the HU scale
    this is a change of window level and width, except that HU values the
    original window already clipped stay clipped.

    Args:
        images: (n, 1, H, W) slices in [0, 1], on any device.
        settings: Ranges of the random transforms.
        generator: CPU generator for every random draw.
        masks: Optional (n, 1, H, W) integer lesion masks, moved with the
            same geometry (nearest neighbour).

    Returns:
        (n, 1, size, size) views in [0, 1], and the moved masks (or None).
    """
    n, size, device = images.shape[0], settings.output_size, images.device
    grid = _geometric_grid(n, size, settings, generator).to(device)
    views = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    moved_masks = None
    if masks is not None:
        moved = F.grid_sample(masks.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
        moved_masks = moved.round().to(masks.dtype)

    level = _uniform(n, -settings.level_jitter, settings.level_jitter, generator).to(device).view(n, 1, 1, 1)
    width = _uniform(n, 1 - settings.width_jitter, 1 + settings.width_jitter, generator).to(device).view(n, 1, 1, 1)
    views = ((views - 0.5 - level) / width + 0.5).clamp(0.0, 1.0)

    blurred = torch.rand(n, generator=generator) < settings.blur_probability
    sigmas = torch.where(blurred, _uniform(n, *settings.blur_sigma, generator), torch.zeros(n))
    if bool((sigmas > 0).any()):
        views = _gaussian_blur(views, sigmas)

    noise_std = _uniform(n, 0.0, settings.noise_std, generator).to(device).view(n, 1, 1, 1)
    noise = torch.randn(views.shape, generator=generator).to(device)
    views = (views + noise_std * noise).clamp(0.0, 1.0)
    return views, moved_masks


def resize_slices(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (n, 1, H, W) slices to size × size (bilinear, antialiased) for evaluation."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


# ---------- collapse watch ----------


def check_collapse(std: float, dimension: int, min_std_ratio: float, iteration: int | None = None) -> bool:
    """Return True, and log a warning, when the embedding std signals collapse.

    A healthy std is about ``1/sqrt(dimension)``. Collapse is declared when
    ``std < min_std_ratio / sqrt(dimension)``.
    """
    threshold = min_std_ratio / math.sqrt(dimension)
    if std < threshold:
        where = f" at iteration {iteration}" if iteration is not None else ""
        logger.warning(
            "Possible representation collapse%s: embedding std %.4f is below %.4f (%.2f x 1/sqrt(%d)); "
            "lower the learning rate, enlarge the batch or strengthen the augmentation",
            where,
            std,
            threshold,
            min_std_ratio,
            dimension,
        )
        return True
    return False


# ---------- training ----------


def _with_masks(batches: Iterator[dict[str, torch.Tensor]]) -> Iterator[dict[str, torch.Tensor]]:
    for batch in batches:
        if "label" not in batch:
            batch["label"] = torch.zeros_like(batch["image"], dtype=torch.int64)
        yield batch


@dataclass
class PretrainingRun:
    """A pre-trained model and its record.

    Attributes:
        model: The Siamese model holding its final state.
        result: The training loop's result (``history`` has ``embedding_std``).
        collapse_warnings: Validation points at which collapse was declared.
    """

    model: SiameseModel
    result: TrainingResult
    collapse_warnings: list[int]


def pretrain_encoder(store: SliceStore, rows: Sequence[int], params: Mapping[str, Any]) -> PretrainingRun:
    """Pre-train the shared ResNet-18 encoder on store rows without labels.

    Each step reads ``batch_size`` slices, makes two views of each
    (``augment_view``), normalises them like the classification inputs and
    minimises the method's loss. With ``mask_guided``, slices with lesion
    masks add ``mask_weight`` times the agreement of their mask-pooled
    features between the views (``region_agreement_loss``).

    Every ``validate_every`` steps the projector outputs of a fixed set of
    up to ``monitor_slices`` unaugmented slices give the collapse statistic
    ``embedding_std``. The final state is kept, not the one with the
    highest std, since a high std alone does not mean a useful encoder.

    Args:
        store: The slice store (masks optional).
        rows: Store rows to pre-train on (train split only; the caller selects them).
        params: The ``pretraining`` parameters.

    Raises:
        ValueError: ``rows`` is empty or a setting is invalid.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        raise ValueError("no slices to pre-train on; check pretraining.sources and the splits")
    training = params["training"]
    generator = seed_everything(int(params["seed"]))
    device = select_device(params.get("device", "auto"))
    settings = build_view_augmentation(params)
    in_channels = int(params.get("in_channels", 1))
    mean, std = normalisation_statistics(params["normalisation"]["mean"], params["normalisation"]["std"], in_channels)
    mean_tensor = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    std_tensor = torch.tensor(std, device=device).view(1, -1, 1, 1)
    mask_guided = bool(params.get("mask_guided", False)) and store.has("mask")
    if params.get("mask_guided", False) and not store.has("mask"):
        logger.info("pretraining.mask_guided is on but the slice store has no masks, so the mask term is off")
    mask_weight = float(params.get("mask_weight", 0.0))
    iterations = int(training["iterations"])

    def normalise(images: torch.Tensor) -> torch.Tensor:
        if in_channels == 3:
            images = images.expand(-1, 3, -1, -1)
        return (images - mean_tensor) / std_tensor

    model = build_ssl_model(params).to(device)
    batch_size = int(training["batch_size"])
    if batch_size < 2:
        raise ValueError(f"pretraining.training.batch_size must be at least 2 for batch norm, got {batch_size}")
    batches = _with_masks(endless_store_batches(store, rows, batch_size, generator))
    optimizer = build_optimizer((p for p in model.parameters() if p.requires_grad), training)
    scheduler = None
    if training.get("lr_schedule", "cosine") == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=iterations)
    state = {"steps": 0, "pending": False, "region_loss": 0.0}

    def catch_up() -> None:
        # The loop steps the optimiser after loss_fn returns, so BYOL's target follows here.
        if state["pending"]:
            state["steps"] += 1
            model.after_step(state["steps"], iterations)
            state["pending"] = False

    def loss_fn(network: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        catch_up()
        masks = batch["label"] if mask_guided else None
        view1, masks1 = augment_view(batch["image"], settings, generator, masks)
        view2, masks2 = augment_view(batch["image"], settings, generator, masks)
        view1, view2 = normalise(view1), normalise(view2)
        maps1 = resnet_feature_map(network.encoder, view1)
        maps2 = resnet_feature_map(network.encoder, view2)
        loss = network.pair_loss(view1, view2, maps1.mean(dim=(2, 3)), maps2.mean(dim=(2, 3)))
        if mask_guided and mask_weight > 0:
            pooled1, valid1 = mask_pooled_features(maps1, masks1)
            pooled2, valid2 = mask_pooled_features(maps2, masks2)
            region = region_agreement_loss(pooled1, pooled2, valid1 & valid2)
            state["region_loss"] = float(region.detach())
            loss = loss + mask_weight * region
        state["pending"] = True
        return loss

    monitor_rows = rows[: int(params["collapse"]["monitor_slices"])]
    monitor_images = resize_slices(read_slices(store, monitor_rows)["image"], settings.output_size)
    min_std_ratio = float(params["collapse"]["min_std_ratio"])
    out_dim = int(params["projector"]["out_dim"])
    collapse_warnings: list[int] = []

    @torch.no_grad()
    def validate(network: torch.nn.Module) -> dict[str, float]:
        catch_up()
        network.eval()
        value = embedding_std(network(normalise(monitor_images.to(device))))
        if check_collapse(value, out_dim, min_std_ratio, state["steps"]):
            collapse_warnings.append(state["steps"])
        logger.info("pretraining it %d: embedding std %.4f (healthy about %.4f)", state["steps"], value,
                    1 / math.sqrt(out_dim))
        metrics = {"embedding_std": value}
        if mask_guided:
            metrics["region_loss"] = state["region_loss"]
        return metrics

    if len(monitor_rows) < 2:
        raise ValueError("the collapse watch needs at least 2 slices; raise pretraining.collapse.monitor_slices")
    logger.info(
        "Pre-training ResNet-18 with %s on %d slices for %d iterations at batch %d (two views) on %s%s",
        model.method,
        len(rows),
        iterations,
        batch_size,
        device,
        f", mask-guided with weight {mask_weight}" if mask_guided else "",
    )
    result = train_iterations(
        model,
        batches,
        loss_fn,
        optimizer,
        scheduler,
        iterations,
        device,
        validate=validate,
        monitor="embedding_std",
        validate_every=int(training["validate_every"]),
        log_every=int(training["log_every"]),
        description=f"pretraining {model.method}",
    )
    catch_up()
    return PretrainingRun(model, result, collapse_warnings)
