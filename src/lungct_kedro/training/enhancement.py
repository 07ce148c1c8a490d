"""Training and scoring of slice-restoration (dehazing) networks on top of the shared loop.

Training pairs are made on the fly: every batch draws fresh faults for its
clean slices (``lungct_kedro.imaging.degrade``). The low-dose fault is the
exception, because its projection round trip costs about 0.1 s per 128 px
slice: each training slice with HU gets ``low_dose.training_realisations``
low-dose reconstructions once, at doses drawn from the configured range, and a
batch that draws low dose for the slice picks one of them. Validation and test
pairs are made once per slice with a generator seeded by the slice's store
row, so they do not depend on which other slices are evaluated.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.losses import SSIMLoss
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import nn

from lungct_kedro.imaging.degrade import (
    apply_fault_plan,
    degrade_slice,
    draw_fault_plan,
    low_dose_fault,
    validate_degradation_params,
)
from lungct_kedro.models.enhancement import build_enhancement_model
from lungct_kedro.training.device import seed_everything, select_device
from lungct_kedro.training.loop import TrainingResult, train_iterations

logger = logging.getLogger(__name__)

#: Intensity range of lung-windowed slices, used as PSNR and SSIM data range.
DATA_RANGE = 1.0
#: PSNR reported for a prediction identical to its reference, in dB.
MAX_PSNR_DB = 100.0
#: Random stream ids, so that training, evaluation pairs and the low-dose bank never share draws.
_TRAIN_STREAM, _EVAL_STREAM, _BANK_STREAM = 1, 2, 3


@dataclass
class CleanSlices:
    """Clean slices with what the degradation model needs per slice.

    Attributes:
        images: float32 (n, H, W) lung-windowed slices in [0, 1].
        hu: int16 or float32 (n, H, W) HU slices; rows where ``has_hu`` is
            False are ignored.
        has_hu: bool (n,), whether the row has real HU values.
        spacing_mm: float (n,), pixel spacing of the stored slice in mm (NaN
            where unknown, which rules low dose out).
        store_index: int (n,), the slice store rows, used to seed evaluation
            pairs.
    """

    images: np.ndarray
    hu: np.ndarray
    has_hu: np.ndarray
    spacing_mm: np.ndarray
    store_index: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def can_lower_dose(self, row: int) -> bool:
        """Tell whether row ``row`` has HU and a known pixel spacing."""
        return bool(self.has_hu[row]) and math.isfinite(float(self.spacing_mm[row]))


class EnhancementLoss(nn.Module):
    """Weighted sum ``l1_weight · L1 + ssim_weight · (1 − SSIM)``.

    SSIM is MONAI's ``SSIMLoss`` (2D, Gaussian window of sigma 1.5 px, data
    range 1). The loss is computed in float32 with autocast off, because the
    local variances of SSIM lose precision in float16.

    Args:
        l1_weight: Weight of the mean absolute error, >= 0.
        ssim_weight: Weight of the SSIM loss, >= 0.
        ssim_window_px: Side of the SSIM window in px (odd). 11 is the
            usual choice; 7 matches the scikit-image SSIM used for scoring
            and halves the cost of the loss, whose depthwise convolution
            backward pass is slow on the CPU.

    Raises:
        ValueError: A weight is negative, or both are 0.
    """

    def __init__(self, l1_weight: float = 1.0, ssim_weight: float = 1.0, ssim_window_px: int = 11) -> None:
        super().__init__()
        if l1_weight < 0 or ssim_weight < 0 or l1_weight + ssim_weight == 0:
            raise ValueError(
                f"loss weights must be >= 0 and not both 0, got l1_weight={l1_weight}, ssim_weight={ssim_weight}"
            )
        self.l1_weight = float(l1_weight)
        self.ssim_weight = float(ssim_weight)
        self.ssim = SSIMLoss(spatial_dims=2, data_range=DATA_RANGE, win_size=int(ssim_window_px))

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=prediction.device.type, enabled=False):
            prediction, target = prediction.float(), target.float()
            loss = self.l1_weight * torch.mean(torch.abs(prediction - target))
            if self.ssim_weight:
                loss = loss + self.ssim_weight * self.ssim(prediction, target)
        return loss


def psnr(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB with data range 1, ``10 · log10(1 / MSE)``.

    Identical images score ``MAX_PSNR_DB`` instead of infinity, so means stay
    finite.
    """
    prediction = np.asarray(prediction, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if np.mean((prediction - reference) ** 2) == 0.0:
        return MAX_PSNR_DB
    return float(min(peak_signal_noise_ratio(reference, prediction, data_range=DATA_RANGE), MAX_PSNR_DB))


def ssim(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Structural similarity with data range 1 (scikit-image, 7 px uniform window)."""
    return float(
        structural_similarity(
            np.asarray(reference, dtype=np.float64), np.asarray(prediction, dtype=np.float64), data_range=DATA_RANGE
        )
    )


def make_evaluation_pairs(
    slices: CleanSlices, params: Mapping[str, Any], seed: int, window: tuple[float, float]
) -> tuple[np.ndarray, list[dict[str, dict[str, float]]]]:
    """Degrade every slice once, with a generator seeded by its store row.

    Args:
        slices: Clean slices to degrade.
        params: The degradation parameters.
        seed: The ``dehazing.seed``.
        window: Lung window (level, width) in HU.

    Returns:
        float32 degraded slices (n, H, W) and one fault plan per slice.
    """
    validate_degradation_params(params)
    degraded = np.empty_like(slices.images, dtype=np.float32)
    plans = []
    for row in range(len(slices)):
        rng = np.random.default_rng([seed, _EVAL_STREAM, int(slices.store_index[row])])
        lower_dose = slices.can_lower_dose(row)
        degraded[row], plan = degrade_slice(
            slices.images[row],
            rng,
            params,
            hu=slices.hu[row] if lower_dose else None,
            spacing_mm=float(slices.spacing_mm[row]) if lower_dose else None,
            window=window,
        )
        plans.append(plan)
    return degraded, plans


def build_low_dose_bank(
    slices: CleanSlices, params: Mapping[str, Any], seed: int
) -> dict[int, list[tuple[float, np.ndarray]]]:
    """Simulate ``training_realisations`` low-dose reconstructions per slice with HU.

    Returns:
        Row → list of (dose fraction, float32 HU reconstruction).
    """
    block = params["low_dose"]
    realisations = int(block.get("training_realisations", 1))
    rng = np.random.default_rng([seed, _BANK_STREAM])
    bank: dict[int, list[tuple[float, np.ndarray]]] = {}
    if realisations < 1 or float(block["probability"]) == 0.0:
        return bank
    for row in range(len(slices)):
        if not slices.can_lower_dose(row):
            continue
        bank[row] = []
        for _ in range(realisations):
            dose = float(rng.uniform(*block["dose_fraction"]))
            reconstruction = low_dose_fault(
                slices.hu[row],
                dose,
                rng,
                spacing_mm=float(slices.spacing_mm[row]),
                incident_photons=float(block.get("incident_photons", 1e5)),
                n_angles=int(block.get("n_angles", 180)),
            )
            bank[row].append((dose, reconstruction))
    return bank


def endless_degraded_batches(
    slices: CleanSlices,
    params: Mapping[str, Any],
    batch_size: int,
    seed: int,
    window: tuple[float, float],
    low_dose_bank: Mapping[int, Sequence[tuple[float, np.ndarray]]],
    flip_probability: float = 0.5,
    patch_size_px: int | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield batches ``{"image": degraded, "target": clean}`` (n, 1, P, P) forever.

    Rows are shuffled at each pass (the last incomplete batch of a pass is
    dropped unless there are fewer rows than one batch). Each slice gets a
    fresh fault plan per batch and is degraded whole, so global faults keep
    their slice statistics. The pair is then cropped at a random position to
    ``patch_size_px`` (the whole slice when None or not smaller) and flipped
    with ``flip_probability`` per axis, input and target alike.

    Raises:
        ValueError: ``slices`` is empty or ``patch_size_px`` is below 8.
    """
    if len(slices) == 0:
        raise ValueError("no clean training slices to degrade; check dehazing.sources and the split")
    if patch_size_px is not None and int(patch_size_px) < 8:
        raise ValueError(f"patch_size_px must be at least 8 px or null for whole slices, got {patch_size_px}")
    height, width = slices.images.shape[1:]
    rng = np.random.default_rng([seed, _TRAIN_STREAM])
    per_pass = max(len(slices) // batch_size, 1)
    while True:
        permutation = rng.permutation(len(slices))
        for start in range(0, per_pass * batch_size, batch_size):
            inputs, targets = [], []
            for row in permutation[start : start + batch_size]:
                realisations = low_dose_bank.get(int(row), ())
                plan = draw_fault_plan(rng, params, has_hu=bool(realisations))
                low_dose_hu = None
                if "low_dose" in plan and realisations:
                    dose, low_dose_hu = realisations[int(rng.integers(len(realisations)))]
                    plan["low_dose"]["dose_fraction"] = dose
                clean = slices.images[row]
                degraded = apply_fault_plan(clean, plan, rng, params, window=window, low_dose_hu=low_dose_hu)
                if patch_size_px is not None and int(patch_size_px) < min(height, width):
                    size = int(patch_size_px)
                    top, left = int(rng.integers(height - size + 1)), int(rng.integers(width - size + 1))
                    clean = clean[top : top + size, left : left + size]
                    degraded = degraded[top : top + size, left : left + size]
                for axis in (0, 1):
                    if rng.random() < flip_probability:
                        clean, degraded = np.flip(clean, axis), np.flip(degraded, axis)
                inputs.append(np.ascontiguousarray(degraded))
                targets.append(np.ascontiguousarray(clean))
            yield {
                "image": torch.from_numpy(np.stack(inputs).astype(np.float32))[:, None],
                "target": torch.from_numpy(np.stack(targets).astype(np.float32))[:, None],
            }


@torch.no_grad()
def restore_images(
    model: nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 16
) -> np.ndarray:
    """Run the network on (n, H, W) slices and clamp its output to [0, 1].

    Returns:
        float32 array of the shape of ``images``.
    """
    model.eval()
    images = np.asarray(images, dtype=np.float32)
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(images[start : start + batch_size])[:, None].to(device)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            restored = model(batch)
        outputs.append(restored.float().clamp(0.0, 1.0)[:, 0].cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros_like(images)


def train_enhancement(
    train_slices: CleanSlices,
    val_inputs: np.ndarray,
    val_targets: np.ndarray,
    params: Mapping[str, Any],
    window: tuple[float, float],
) -> tuple[nn.Module, TrainingResult]:
    """Train a restoration network with L1 + SSIM loss and Adam.

    The learning rate follows a cosine decay to 0 over the iterations when
    ``training.cosine_schedule`` is true. Validation scores the network's
    PSNR and SSIM on the fixed validation pairs; the state with the best
    ``val_psnr`` is kept.

    Args:
        train_slices: Clean training slices, degraded on the fly.
        val_inputs: float32 (n, H, W) degraded validation slices (n may be 0).
        val_targets: Their clean references.
        params: The ``dehazing`` parameters.
        window: Lung window (level, width) in HU of the store.

    Returns:
        The model holding its best state, and the training result.
    """
    training = params["training"]
    degradation = params["degradation"]
    validate_degradation_params(degradation)
    seed = int(params["seed"])
    seed_everything(seed)
    device = select_device(params.get("device", "auto"))
    model = build_enhancement_model(params["model"]).to(device)

    bank = build_low_dose_bank(train_slices, degradation, seed)
    batch_size = int(training["batch_size"])
    patch_size = training.get("patch_size_px")
    batches = endless_degraded_batches(
        train_slices,
        degradation,
        batch_size,
        seed,
        window,
        bank,
        float(training.get("flip_probability", 0.5)),
        int(patch_size) if patch_size is not None else None,
    )
    criterion = EnhancementLoss(
        float(training["l1_weight"]), float(training["ssim_weight"]), int(training.get("ssim_window_px", 11))
    )
    optimizer = torch.optim.Adam(
        model.parameters(), lr=float(training["learning_rate"]), weight_decay=float(training.get("weight_decay", 0.0))
    )
    iterations = int(training["iterations"])
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=iterations)
        if training.get("cosine_schedule", True)
        else None
    )

    def loss_fn(network: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return criterion(network(batch["image"]), batch["target"])

    def validate(network: nn.Module) -> dict[str, float]:
        restored = restore_images(network, val_inputs, device)
        return {
            "val_psnr": float(np.mean([psnr(r, t) for r, t in zip(restored, val_targets)])),
            "val_ssim": float(np.mean([ssim(r, t) for r, t in zip(restored, val_targets)])),
        }

    if len(val_inputs):
        logger.info(
            "Validation pairs before training: PSNR %.2f dB, SSIM %.3f",
            np.mean([psnr(image, target) for image, target in zip(val_inputs, val_targets)]),
            np.mean([ssim(image, target) for image, target in zip(val_inputs, val_targets)]),
        )
    logger.info(
        "Training %s restoration on %d clean slices (%d with low-dose reconstructions, %d validation pairs) "
        "for %d iterations at batch %d on %s",
        params["model"]["architecture"],
        len(train_slices),
        len(bank),
        len(val_inputs),
        iterations,
        batch_size,
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
        validate=validate if len(val_inputs) else None,
        monitor="val_psnr",
        validate_every=int(training["validate_every"]),
        log_every=int(training["log_every"]),
        description="dehazing",
    )
    model.load_state_dict(result.best_state)
    return model, result


def load_enhancement_model(
    checkpoint: Mapping[str, Any], device_preference: str = "auto"
) -> tuple[nn.Module, torch.device]:
    """Rebuild the network stored in ``checkpoint`` on the chosen device."""
    device = select_device(device_preference)
    model = build_enhancement_model(checkpoint["model"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device), device
