"""Segmentation training and prediction on top of the shared loop."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss

from lungct_kedro.datasets.slice_store import SliceStore
from lungct_kedro.models.segmentation import build_segmentation_model, load_resnet18_encoder_into_flexible_unet
from lungct_kedro.training.data import endless_store_batches, random_rotate_flip, read_slices
from lungct_kedro.training.device import seed_everything, select_device
from lungct_kedro.training.loop import TrainingResult, train_iterations
from lungct_kedro.training.metrics import per_slice_lesion_metrics, summarise_segmentation

logger = logging.getLogger(__name__)

TARGETS = {"multiclass": 3, "binary": 2}


def number_of_classes(target: str) -> int:
    """Return the output channels for ``target`` (``multiclass`` or ``binary``)."""
    if target not in TARGETS:
        raise ValueError(f"segmentation target {target!r} is not supported; use one of {sorted(TARGETS)}")
    return TARGETS[target]


@torch.no_grad()
def predict_class_maps(
    model: torch.nn.Module,
    store: SliceStore,
    indices: Sequence[int],
    device: torch.device,
    batch_size: int = 16,
) -> np.ndarray:
    """Predict a class map for each store row in ``indices``.

    Returns:
        uint8 array of shape (len(indices), size, size).
    """
    model.eval()
    indices = np.asarray(indices, dtype=np.int64)
    outputs = []
    for start in range(0, len(indices), batch_size):
        images = read_slices(store, indices[start : start + batch_size])["image"]
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            logits = model(images.to(device))
        outputs.append(logits.argmax(dim=1).to(torch.uint8).cpu().numpy())
    size = store.image_size
    return np.concatenate(outputs) if outputs else np.zeros((0, size, size), dtype=np.uint8)


def reference_class_maps(store: SliceStore, indices: Sequence[int], binary: bool) -> np.ndarray:
    """Read reference masks for ``indices``, merged to one lesion class if ``binary``."""
    masks = np.asarray(store.arrays["mask"][np.asarray(indices, dtype=np.int64)], dtype=np.uint8)
    return (masks > 0).astype(np.uint8) if binary else masks


def train_segmentation(
    store: SliceStore,
    train_indices: Sequence[int],
    val_indices: Sequence[int],
    params: Mapping[str, Any],
    init_encoder_state: Mapping[str, torch.Tensor] | None = None,
) -> tuple[torch.nn.Module, TrainingResult]:
    """Train a segmentation network with Dice + cross-entropy loss and SGD.

    The learning rate follows a polynomial decay, ``lr·(1 − t/T)^power``.
    Validation computes the per-slice mean and the pooled lesion Dice; the
    state with the best ``training.monitor`` metric is kept.

    Args:
        store: The slice store with masks.
        train_indices: Store rows to train on.
        val_indices: Store rows to validate on.
        params: The ``segmentation`` parameters.
        init_encoder_state: ResNet-18 encoder weights (from the pretraining
            pipeline) to start from; needs the ``flexible_unet_resnet18``
            architecture.

    Raises:
        ValueError: ``init_encoder_state`` is given for another architecture.

    Returns:
        The model holding its best state, and the training result.
    """
    training = params["training"]
    binary = params["target"] == "binary"
    generator = seed_everything(int(params["seed"]))
    device = select_device(params.get("device", "auto"))

    model = build_segmentation_model(params["model"], number_of_classes(params["target"]))
    if init_encoder_state is not None:
        if params["model"].get("architecture") != "flexible_unet_resnet18":
            raise ValueError(
                "pre-trained encoder weights need segmentation.model.architecture: flexible_unet_resnet18, "
                f"got {params['model'].get('architecture')!r}"
            )
        report = load_resnet18_encoder_into_flexible_unet(model, init_encoder_state)
        logger.info(
            "Loaded %d pre-trained encoder tensors into the U-Net (%d encoder tensors keep random values)",
            report["loaded"],
            len(report["not_initialised"]),
        )
    model = model.to(device)
    batches = endless_store_batches(store, train_indices, int(training["batch_size"]), generator, binary)
    rotate_degrees = float(params["augmentation"]["rotate_degrees"])
    flip_probability = float(params["augmentation"]["flip_probability"])

    criterion = DiceCELoss(
        to_onehot_y=True,
        softmax=True,
        lambda_dice=float(training["dice_weight"]),
        lambda_ce=float(training["ce_weight"]),
    )
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=float(training["learning_rate"]),
        momentum=float(training["momentum"]),
        weight_decay=float(training["weight_decay"]),
        nesterov=True,
    )
    iterations = int(training["iterations"])
    scheduler = torch.optim.lr_scheduler.PolynomialLR(
        optimizer, total_iters=iterations, power=float(training["poly_power"])
    )
    references = reference_class_maps(store, val_indices, binary) if len(val_indices) else None

    def loss_fn(network: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # Augmenting here runs it on the training device, one resampling per batch.
        batch = random_rotate_flip(batch, rotate_degrees, flip_probability, generator)
        return criterion(network(batch["image"]), batch["label"])

    def validate(network: torch.nn.Module) -> dict[str, float]:
        predictions = predict_class_maps(network, store, val_indices, device)
        per_slice = per_slice_lesion_metrics(predictions, references)
        summary = summarise_segmentation(per_slice, predictions, references, multiclass=False)
        return {"val_dice": summary["dice_mean"], "val_dice_pooled": summary["dice_pooled"]}

    logger.info(
        "Training %s segmentation on %d slices (%d validation) for %d iterations at batch %d on %s",
        params["target"],
        len(train_indices),
        len(val_indices),
        iterations,
        int(training["batch_size"]),
        device,
    )
    result = train_iterations(
        model,
        batches,
        loss_fn,
        optimizer,
        scheduler,
        iterations,
        device,
        validate=validate if references is not None else None,
        monitor=str(training["monitor"]),
        validate_every=int(training["validate_every"]),
        log_every=int(training["log_every"]),
        description="segmentation",
    )
    model.load_state_dict(result.best_state)
    return model, result


def load_segmentation_model(
    checkpoint: Mapping[str, Any], device_preference: str = "auto"
) -> tuple[torch.nn.Module, torch.device]:
    """Rebuild the network stored in ``checkpoint`` on the chosen device."""
    device = select_device(device_preference)
    model = build_segmentation_model(checkpoint["model"], number_of_classes(checkpoint["target"]))
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device), device
