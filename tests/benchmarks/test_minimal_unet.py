"""The minimal-loop U-Net of the segmentation methods benchmark."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from minimal_unet import predict_minimal_unet, train_minimal_unet

from lungct_kedro.training.cross_validation import score_lesion_masks

SMALL = {"channels": [8, 16, 32], "num_res_units": 1, "batch_size": 4, "learning_rate": 0.05, "momentum": 0.9, "weight_decay": 0.0}


def bright_squares(n_slices: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Dark noisy slices with one bright square lesion each, at random places."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.0, 0.3, (n_slices, size, size)).astype(np.float32)
    masks = np.zeros((n_slices, size, size), dtype=np.uint8)
    for index in range(n_slices):
        row, column = rng.integers(2, size - 12, size=2)
        masks[index, row : row + 10, column : column + 10] = 1 + index % 2
        images[index, row : row + 10, column : column + 10] = rng.uniform(0.7, 1.0, (10, 10))
    return images, masks


@pytest.fixture
def one_thread():
    """Train on one thread: busy-waiting OpenMP threads on shared cores would eat the CPU budget."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_minimal_unet_learns_squares(one_thread):
    images, masks = bright_squares(8)
    model, run = train_minimal_unet(images, masks, num_classes=3, cpu_budget_s=3.0, seed=0, **SMALL)
    assert run.iterations > 10
    assert run.cpu_seconds >= 3.0
    test_images, test_masks = bright_squares(4, seed=1)
    predictions = predict_minimal_unet(model, test_images)
    assert predictions.shape == test_masks.shape
    assert predictions.dtype == np.uint8
    assert score_lesion_masks(predictions, test_masks)["dice_mean"] > 0.5


def test_minimal_unet_seed_repeats():
    images, masks = bright_squares(4)
    first, first_run = train_minimal_unet(images, masks, num_classes=3, cpu_budget_s=1e-6, seed=3, **SMALL)
    second, second_run = train_minimal_unet(images, masks, num_classes=3, cpu_budget_s=1e-6, seed=3, **SMALL)
    # A budget this small allows the one step that is always taken.
    assert first_run.iterations == second_run.iterations == 1
    # Threaded CPU reductions may differ in the last bits between runs.
    for (name, left), right in zip(first.state_dict().items(), second.state_dict().values()):
        assert np.allclose(left.numpy(), right.numpy(), rtol=1e-4, atol=1e-6), name
    other, _ = train_minimal_unet(images, masks, num_classes=3, cpu_budget_s=1e-6, seed=4, **SMALL)
    first_weight = next(iter(first.state_dict().values())).numpy()
    assert not np.allclose(first_weight, next(iter(other.state_dict().values())).numpy())


def test_minimal_unet_rejects_bad_masks():
    images, masks = bright_squares(2)
    with pytest.raises(ValueError, match="mask value 2 needs at least 3 classes"):
        train_minimal_unet(images, masks, num_classes=2, cpu_budget_s=0.1, seed=0, **SMALL)
    with pytest.raises(ValueError, match="one shape"):
        train_minimal_unet(images, masks[:, :16], num_classes=3, cpu_budget_s=0.1, seed=0, **SMALL)
