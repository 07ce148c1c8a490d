"""Tests for the simulated low-dose CT and the exposure and contrast faults."""

from __future__ import annotations

import numpy as np
import pytest

from lungct_kedro.imaging.lowdose import apply_contrast_fault, apply_exposure_fault, simulate_low_dose
from lungct_kedro.phantom import DEFAULT, render_phantom_patient

SIZE = 96
SPACING_MM = 3.0


def water_disc(size: int = SIZE, radius_fraction: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """Return a water disc (0 HU) in air (-1000 HU) and the mask of its inner 80%."""
    rows, columns = np.mgrid[:size, :size] - (size - 1) / 2.0
    radius = np.hypot(rows, columns)
    hu = np.where(radius <= radius_fraction * size, 0.0, -1000.0)
    return hu, radius <= 0.8 * radius_fraction * size


@pytest.fixture(scope="module")
def phantom_slice() -> tuple[np.ndarray, np.ndarray]:
    params = {**DEFAULT, "n_patients": 1, "slices_per_patient": 1, "image_size": SIZE}
    patient = render_phantom_patient(params, 0, 0)
    return patient.hu[0], patient.body[0]


def noise_sd_hu(clean: np.ndarray, body: np.ndarray, dose_fraction: float) -> float:
    noisy = simulate_low_dose(clean, dose_fraction, np.random.default_rng(3), pixel_spacing_mm=SPACING_MM)
    return float(np.std((noisy - clean)[body]))


def test_noise_falls_as_dose_rises(phantom_slice):
    clean, body = phantom_slice
    low, middle, full = (noise_sd_hu(clean, body, dose) for dose in (0.05, 0.2, 1.0))

    assert low > middle
    assert middle > full


def test_noise_scales_with_inverse_sqrt_dose():
    hu, inner = water_disc()
    sd_low = float(simulate_low_dose(hu, 0.05, np.random.default_rng(1), pixel_spacing_mm=SPACING_MM)[inner].std())
    sd_high = float(simulate_low_dose(hu, 0.2, np.random.default_rng(2), pixel_spacing_mm=SPACING_MM)[inner].std())

    # A quarter of the dose should double the noise (Poisson statistics).
    assert sd_low / sd_high == pytest.approx(2.0, rel=0.25)


def test_water_disc_keeps_mean_at_full_dose():
    hu, inner = water_disc()
    result = simulate_low_dose(hu, 1.0, np.random.default_rng(0), pixel_spacing_mm=SPACING_MM)

    assert abs(float(result[inner].mean())) <= 30.0
    assert abs(float(result[:6, :6].mean()) + 1000.0) <= 30.0


def test_uniform_square_keeps_corners():
    hu = np.zeros((64, 64))
    result = simulate_low_dose(hu, 1.0, np.random.default_rng(0), incident_photons=1e9, pixel_spacing_mm=1.0)

    # The outermost 2 pixels sit on the water/air step of the padding, where
    # filtered back-projection undershoots, so the corner blocks start inside.
    for corner in (result[2:6, 2:6], result[2:6, -6:-2], result[-6:-2, 2:6], result[-6:-2, -6:-2]):
        assert abs(float(corner.mean())) <= 30.0


def test_output_shape_and_dtype():
    hu = np.full((40, 56), -1000.0)
    hu[10:30, 10:46] = 40.0
    result = simulate_low_dose(hu, 0.5, np.random.default_rng(0))

    assert result.shape == (40, 56)
    assert result.dtype == np.float32


def test_same_rng_seed_is_identical():
    hu, _ = water_disc(48)
    first = simulate_low_dose(hu, 0.1, np.random.default_rng(5))
    second = simulate_low_dose(hu, 0.1, np.random.default_rng(5))

    assert np.array_equal(first, second)


@pytest.mark.parametrize("dose_fraction", [0.0, -0.1, 1.5, float("nan")])
def test_invalid_dose_raises(dose_fraction):
    hu, _ = water_disc(32)

    with pytest.raises(ValueError, match="dose_fraction"):
        simulate_low_dose(hu, dose_fraction, np.random.default_rng(0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"incident_photons": 0.0}, "incident_photons"),
        ({"n_angles": 1}, "n_angles"),
        ({"pixel_spacing_mm": -1.0}, "pixel_spacing_mm"),
    ],
)
def test_invalid_acquisition_raises(kwargs, message):
    hu, _ = water_disc(32)

    with pytest.raises(ValueError, match=message):
        simulate_low_dose(hu, 0.5, np.random.default_rng(0), **kwargs)


@pytest.mark.parametrize(
    ("hu", "message"),
    [
        (np.zeros((2, 16, 16)), "2D"),
        (np.zeros(16), "2D"),
        (np.where(np.eye(16) > 0, np.nan, 0.0), "NaN"),
        (np.where(np.eye(16) > 0, np.inf, 0.0), "infinite"),
    ],
)
def test_invalid_image_raises(hu, message):
    with pytest.raises(ValueError, match=message):
        simulate_low_dose(hu, 0.5, np.random.default_rng(0))


@pytest.mark.parametrize(
    ("hu", "shift_hu", "gain", "expected"),
    [
        (-1000.0, 0.0, 2.0, -1000.0),
        (0.0, 0.0, 2.0, 1000.0),
        (0.0, 50.0, 1.0, 50.0),
        (40.0, -40.0, 1.0, 0.0),
        (-500.0, 100.0, 0.5, -650.0),
    ],
)
def test_exposure_fault_values(hu, shift_hu, gain, expected):
    result = apply_exposure_fault(np.array([[hu]]), shift_hu, gain)

    assert result.dtype == np.float32
    assert float(result[0, 0]) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("hu", "factor", "centre_hu", "expected"),
    [
        ([0.0, 100.0], 0.5, None, [25.0, 75.0]),
        ([-1000.0, 0.0], 0.5, 0.0, [-500.0, 0.0]),
        ([-1000.0, 400.0], 1.0, None, [-1000.0, 400.0]),
        ([-200.0, 200.0], 0.25, 100.0, [25.0, 125.0]),
    ],
)
def test_contrast_fault_values(hu, factor, centre_hu, expected):
    result = apply_contrast_fault(np.array([hu]), factor, centre_hu)

    assert result.dtype == np.float32
    assert result[0].tolist() == pytest.approx(expected)


def test_faults_leave_input_unchanged():
    hu = np.array([[-1000.0, 0.0, 400.0]])
    original = hu.copy()
    apply_exposure_fault(hu, 30.0, 1.2)
    apply_contrast_fault(hu, 0.5)

    assert np.array_equal(hu, original)


@pytest.mark.parametrize("factor", [0.0, -0.5, 1.5])
def test_invalid_contrast_factor_raises(factor):
    with pytest.raises(ValueError, match="factor"):
        apply_contrast_fault(np.zeros((4, 4)), factor)


@pytest.mark.parametrize("gain", [0.0, -1.0, float("inf")])
def test_invalid_gain_raises(gain):
    with pytest.raises(ValueError, match="gain"):
        apply_exposure_fault(np.zeros((4, 4)), 0.0, gain)
