"""Tests for the restoration networks, their loss, metrics and training on degraded pairs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from monai.losses import SSIMLoss

from lungct_kedro.imaging.hu import apply_window
from lungct_kedro.models.enhancement import AODNet, DnCNN, ResidualUNet, build_enhancement_model
from lungct_kedro.phantom import DEFAULT, render_phantom_patient
from lungct_kedro.training.enhancement import (
    MAX_PSNR_DB,
    CleanSlices,
    EnhancementLoss,
    build_low_dose_bank,
    endless_degraded_batches,
    make_evaluation_pairs,
    psnr,
    restore_images,
    ssim,
    train_enhancement,
)

SIZE = 32
WINDOW = (-600.0, 1500.0)
DEGRADATION = {
    "min_faults": 1,
    "low_dose": {
        "probability": 0.5,
        "dose_fraction": [0.05, 0.3],
        "incident_photons": 1.0e5,
        "n_angles": 30,
        "training_realisations": 1,
        "fallback_noise_sigma": [0.01, 0.05],
    },
    "blur": {"probability": 0.3, "sigma_px": [0.5, 1.5]},
    "contrast": {"probability": 0.3, "factor": [0.5, 0.9]},
    "exposure": {"probability": 0.3, "gain": [0.8, 1.2], "offset": [-0.1, 0.1]},
    "haze": {"probability": 0.5, "transmission": [0.5, 0.9], "airlight": [0.4, 0.9]},
}
PARAMS = {
    "seed": 3,
    "device": "cpu",
    "degradation": DEGRADATION,
    "model": {"architecture": "dncnn", "depth": 3, "features": 8},
    "training": {
        "iterations": 4,
        "batch_size": 2,
        "learning_rate": 1.0e-3,
        "l1_weight": 1.0,
        "ssim_weight": 1.0,
        "validate_every": 2,
        "log_every": 2,
    },
}


@pytest.fixture(scope="module")
def clean_slices() -> CleanSlices:
    params = {**DEFAULT, "n_patients": 1, "slices_per_patient": 4, "image_size": SIZE}
    hu = render_phantom_patient(params, 0, 0).hu.astype(np.float32)
    has_hu = np.array([True, True, False, False])
    spacing = np.full(4, 360.0 / SIZE)
    return CleanSlices(apply_window(hu, *WINDOW), hu, has_hu, spacing, np.arange(4))


@pytest.mark.parametrize(("mse", "expected_db"), [(0.01, 20.0), (0.0001, 40.0), (0.25, 6.0206)])
def test_psnr_of_known_mse(mse, expected_db):
    reference = np.zeros((16, 16))
    prediction = np.full((16, 16), np.sqrt(mse))

    assert psnr(prediction, reference) == pytest.approx(expected_db, abs=1e-3)


def test_psnr_of_identical_images_is_capped():
    image = np.random.default_rng(0).random((16, 16))

    assert psnr(image, image) == MAX_PSNR_DB


def test_ssim_of_identical_images_is_one():
    image = np.random.default_rng(0).random((32, 32))

    assert ssim(image, image) == pytest.approx(1.0)


def test_ssim_drops_with_noise():
    image = np.random.default_rng(0).random((32, 32))
    noisy = np.clip(image + np.random.default_rng(1).normal(0, 0.2, image.shape), 0, 1)

    assert ssim(noisy, image) < 0.9


def test_loss_combines_l1_and_ssim_with_weights():
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(2, 1, 24, 24, generator=generator)
    prediction = (target + 0.1 * torch.randn(2, 1, 24, 24, generator=generator)).clamp(0, 1)
    l1 = torch.mean(torch.abs(prediction - target))
    ssim_loss = SSIMLoss(spatial_dims=2, data_range=1.0)(prediction, target)

    assert EnhancementLoss(1.0, 0.0)(prediction, target).item() == pytest.approx(l1.item(), rel=1e-6)
    assert EnhancementLoss(0.0, 1.0)(prediction, target).item() == pytest.approx(ssim_loss.item(), rel=1e-6)
    combined = EnhancementLoss(2.0, 3.0)(prediction, target).item()
    assert combined == pytest.approx(2.0 * l1.item() + 3.0 * ssim_loss.item(), rel=1e-6)


def test_loss_is_zero_for_perfect_prediction():
    target = torch.rand(2, 1, 24, 24)

    assert EnhancementLoss(1.0, 1.0)(target, target).item() == pytest.approx(0.0, abs=1e-5)


def test_loss_rejects_zero_weights():
    with pytest.raises(ValueError, match="weights"):
        EnhancementLoss(0.0, 0.0)


@pytest.mark.parametrize(
    "params",
    [
        {"architecture": "dncnn", "depth": 4, "features": 8},
        {"architecture": "residual_unet", "channels": [4, 8, 16], "num_res_units": 1},
        {"architecture": "aod_net", "aod_features": 3},
    ],
)
def test_network_keeps_input_shape(params):
    model = build_enhancement_model(params)
    batch = torch.rand(3, 1, 64, 48)

    assert model(batch).shape == batch.shape


@pytest.mark.parametrize(
    "params",
    [
        {"architecture": "dncnn", "depth": 4, "features": 8},
        {"architecture": "residual_unet", "channels": [4, 8, 16], "num_res_units": 1},
    ],
)
def test_untrained_residual_network_is_identity(params):
    model = build_enhancement_model(params).eval()
    batch = torch.rand(2, 1, 32, 32)

    torch.testing.assert_close(model(batch), batch)


def test_dncnn_adds_its_body_to_input():
    model = DnCNN(depth=4, features=8).eval()
    torch.nn.init.normal_(model.body[-1].weight)
    batch = torch.rand(2, 1, 16, 16)

    torch.testing.assert_close(model(batch) - batch, model.body(batch))
    assert model.body(batch).abs().mean().item() > 0.0


def test_residual_unet_adds_its_head_to_input():
    model = ResidualUNet(channels=(4, 8), num_res_units=0).eval()
    torch.nn.init.normal_(model.head.weight)
    batch = torch.rand(2, 1, 16, 16)

    torch.testing.assert_close(model(batch) - batch, model.head(model.unet(batch)))
    assert model.head(model.unet(batch)).abs().mean().item() > 0.0


def test_aod_net_applies_its_formula():
    model = AODNet(features=3).eval()
    batch = torch.rand(2, 1, 16, 16)
    k = model.estimate_k(batch)

    assert k.shape == batch.shape
    torch.testing.assert_close(model(batch), torch.relu(k * batch - k + 1.0))


def test_unknown_architecture_rejected():
    with pytest.raises(ValueError, match="architecture"):
        build_enhancement_model({"architecture": "transformer"})


def test_batches_pair_degraded_and_clean(clean_slices):
    bank = build_low_dose_bank(clean_slices, DEGRADATION, seed=0)
    batch = next(endless_degraded_batches(clean_slices, DEGRADATION, 3, 0, WINDOW, bank))

    assert sorted(bank) == [0, 1]
    assert batch["image"].shape == (3, 1, SIZE, SIZE)
    assert batch["target"].shape == (3, 1, SIZE, SIZE)
    assert float(batch["image"].min()) >= 0.0
    assert float(batch["image"].max()) <= 1.0
    assert torch.abs(batch["image"] - batch["target"]).mean().item() > 1e-3


def test_batches_repeat_with_seed(clean_slices):
    bank = build_low_dose_bank(clean_slices, DEGRADATION, seed=0)
    first = endless_degraded_batches(clean_slices, DEGRADATION, 2, 7, WINDOW, bank)
    second = endless_degraded_batches(clean_slices, DEGRADATION, 2, 7, WINDOW, bank)
    for _ in range(3):
        a, b = next(first), next(second)

        torch.testing.assert_close(a["image"], b["image"])
        torch.testing.assert_close(a["target"], b["target"])


def test_batches_draw_fresh_faults(clean_slices):
    batches = endless_degraded_batches(clean_slices, DEGRADATION, 4, 7, WINDOW, {}, flip_probability=0.0)
    first, second = next(batches), next(batches)
    # The same clean slices come back in another order, with other faults.
    order_first = torch.argsort(first["target"].flatten(1).sum(1))
    order_second = torch.argsort(second["target"].flatten(1).sum(1))

    torch.testing.assert_close(first["target"][order_first], second["target"][order_second])
    assert not torch.allclose(first["image"][order_first], second["image"][order_second])


def test_evaluation_pairs_depend_only_on_store_row(clean_slices):
    all_pairs, all_plans = make_evaluation_pairs(clean_slices, DEGRADATION, 1, WINDOW)
    last = CleanSlices(*(array[3:] for array in (
        clean_slices.images, clean_slices.hu, clean_slices.has_hu, clean_slices.spacing_mm, clean_slices.store_index
    )))
    last_pairs, last_plans = make_evaluation_pairs(last, DEGRADATION, 1, WINDOW)

    np.testing.assert_array_equal(all_pairs[3], last_pairs[0])
    assert all_plans[3] == last_plans[0]


def test_training_runs_and_validates(clean_slices):
    val_inputs, _ = make_evaluation_pairs(clean_slices, DEGRADATION, 1, WINDOW)
    model, result = train_enhancement(clean_slices, val_inputs[:2], clean_slices.images[:2], PARAMS, WINDOW)
    validated = [point for point in result.history if "val_psnr" in point]
    restored = restore_images(model, val_inputs, torch.device("cpu"))

    assert len(validated) == 2
    assert np.isfinite(result.best_score)
    assert result.best_score == max(point["val_psnr"] for point in validated)
    assert restored.shape == val_inputs.shape
    assert float(restored.min()) >= 0.0
    assert float(restored.max()) <= 1.0


def test_training_is_reproducible(clean_slices):
    params = copy.deepcopy(PARAMS)
    params["training"]["iterations"] = 2
    val_inputs, _ = make_evaluation_pairs(clean_slices, DEGRADATION, 1, WINDOW)
    first, _ = train_enhancement(clean_slices, val_inputs[:2], clean_slices.images[:2], params, WINDOW)
    second, _ = train_enhancement(clean_slices, val_inputs[:2], clean_slices.images[:2], params, WINDOW)

    for key, value in first.state_dict().items():
        torch.testing.assert_close(value, second.state_dict()[key])
