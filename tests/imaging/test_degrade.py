"""Tests for the degradation model that makes paired dehazing data."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from scipy import ndimage

from lungct_kedro.imaging.degrade import (
    FAULT_NAMES,
    blur_fault,
    contrast_fault,
    degrade_slice,
    describe_fault_plan,
    draw_fault_plan,
    exposure_fault,
    haze_fault,
    low_dose_fault,
    validate_degradation_params,
)
from lungct_kedro.imaging.hu import apply_window
from lungct_kedro.imaging.lowdose import apply_contrast_fault, apply_exposure_fault
from lungct_kedro.phantom import DEFAULT, render_phantom_patient
from lungct_kedro.phantom.twin import make_poor_quality_twin

SIZE = 64
SPACING_MM = 360.0 / SIZE
WINDOW = (-600.0, 1500.0)

PARAMS = {
    "min_faults": 1,
    "low_dose": {
        "probability": 0.5,
        "dose_fraction": [0.05, 0.3],
        "incident_photons": 1.0e5,
        "n_angles": 45,
        "fallback_noise_sigma": [0.01, 0.05],
    },
    "blur": {"probability": 0.5, "sigma_px": [0.5, 1.5]},
    "contrast": {"probability": 0.5, "factor": [0.5, 0.9]},
    "exposure": {"probability": 0.5, "gain": [0.8, 1.2], "offset": [-0.1, 0.1]},
    "haze": {"probability": 0.5, "transmission": [0.5, 0.9], "airlight": [0.4, 0.9]},
}


@pytest.fixture(scope="module")
def phantom_slice() -> dict[str, np.ndarray]:
    params = {**DEFAULT, "n_patients": 1, "slices_per_patient": 1, "image_size": SIZE}
    patient = render_phantom_patient(params, 0, 0)
    hu = patient.hu[0]
    return {"hu": hu, "body": patient.body[0], "image": apply_window(hu, *WINDOW)}


def laplacian_variance(image: np.ndarray) -> float:
    return float(ndimage.laplace(image.astype(np.float64)).var())


def test_lower_dose_gives_more_noise(phantom_slice):
    hu, body, clean = phantom_slice["hu"], phantom_slice["body"], phantom_slice["image"]
    noise = {}
    for dose in (0.03, 0.1, 0.5):
        low_dose = low_dose_fault(hu, dose, np.random.default_rng(0), spacing_mm=SPACING_MM, n_angles=90)
        noise[dose] = float(np.std((apply_window(low_dose, *WINDOW) - clean)[body]))

    assert noise[0.03] > noise[0.1]
    assert noise[0.1] > noise[0.5]


def test_larger_blur_lowers_laplacian_variance(phantom_slice):
    image = phantom_slice["image"]
    variances = [laplacian_variance(blur_fault(image, sigma)) for sigma in (0.0, 0.5, 1.0, 2.0)]

    assert variances[0] == pytest.approx(laplacian_variance(image))
    assert variances[0] > variances[1]
    assert variances[1] > variances[2]
    assert variances[2] > variances[3]


def test_thicker_haze_lowers_contrast(phantom_slice):
    image = phantom_slice["image"]
    contrasts = [float(haze_fault(image, t, airlight=0.7).std()) for t in (1.0, 0.8, 0.5, 0.2)]

    assert contrasts[0] == pytest.approx(float(image.std()), rel=1e-5)
    assert contrasts[0] > contrasts[1]
    assert contrasts[1] > contrasts[2]
    assert contrasts[2] > contrasts[3]


def test_haze_follows_scattering_model():
    clean = np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)
    # I = J t + A (1 - t) with t = 0.6 and A = 0.8, worked by hand.
    expected = np.array([[0.32, 0.62], [0.92, 0.47]], dtype=np.float32)

    np.testing.assert_allclose(haze_fault(clean, 0.6, 0.8), expected, atol=1e-6)


def test_haze_accepts_transmission_map():
    clean = np.zeros((2, 2), dtype=np.float32)
    transmission = np.array([[1.0, 0.5], [0.5, 0.25]])

    np.testing.assert_allclose(haze_fault(clean, transmission, 1.0), 1.0 - transmission, atol=1e-6)


def test_lower_contrast_factor_lowers_contrast(phantom_slice):
    image = phantom_slice["image"]
    contrasts = [float(contrast_fault(image, factor).std()) for factor in (1.0, 0.7, 0.4)]

    assert contrasts[0] == pytest.approx(float(image.std()), rel=1e-5)
    assert contrasts[0] > contrasts[1]
    assert contrasts[1] > contrasts[2]


def test_exposure_intensity_is_gain_and_offset():
    image = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)

    np.testing.assert_allclose(exposure_fault(image, 0.8, 0.1), [[0.1, 0.5, 0.9]], atol=1e-6)
    np.testing.assert_allclose(exposure_fault(image, 1.5, 0.0), [[0.0, 0.75, 1.0]], atol=1e-6)


def test_hu_faults_match_lowdose_module(phantom_slice):
    hu = phantom_slice["hu"]

    np.testing.assert_array_equal(
        exposure_fault(hu, gain=1.1, offset=-50.0, domain="hu"), apply_exposure_fault(hu, -50.0, gain=1.1)
    )
    np.testing.assert_array_equal(contrast_fault(hu, 0.6, domain="hu"), apply_contrast_fault(hu, 0.6))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda image: blur_fault(image, -1.0), "sigma_px"),
        (lambda image: haze_fault(image, 0.0, 0.5), "transmission"),
        (lambda image: haze_fault(image, 0.5, 1.5), "airlight"),
        (lambda image: haze_fault(image, np.ones((3, 3)), 0.5), "shape"),
        (lambda image: exposure_fault(image, 0.0, 0.0), "gain"),
        (lambda image: contrast_fault(image, 0.0), "factor"),
        (lambda image: contrast_fault(image, 0.5, domain="linear"), "domain"),
    ],
)
def test_fault_rejects_invalid_severity(call, message):
    with pytest.raises(ValueError, match=message):
        call(np.full((4, 4), 0.5, dtype=np.float32))


def test_same_seed_gives_same_degradation(phantom_slice):
    first, first_plan = degrade_slice(
        phantom_slice["image"], np.random.default_rng(5), PARAMS, phantom_slice["hu"], SPACING_MM, WINDOW
    )
    second, second_plan = degrade_slice(
        phantom_slice["image"], np.random.default_rng(5), PARAMS, phantom_slice["hu"], SPACING_MM, WINDOW
    )

    np.testing.assert_array_equal(first, second)
    assert first_plan == second_plan


def test_other_seed_gives_other_degradation(phantom_slice):
    first, _ = degrade_slice(phantom_slice["image"], np.random.default_rng(5), PARAMS, phantom_slice["hu"], SPACING_MM)
    second, _ = degrade_slice(phantom_slice["image"], np.random.default_rng(6), PARAMS, phantom_slice["hu"], SPACING_MM)

    assert not np.array_equal(first, second)


def test_degraded_slice_is_valid_and_changed(phantom_slice):
    for seed in range(8):
        degraded, plan = degrade_slice(
            phantom_slice["image"], np.random.default_rng(seed), PARAMS, phantom_slice["hu"], SPACING_MM
        )

        assert degraded.dtype == np.float32
        assert degraded.shape == phantom_slice["image"].shape
        assert float(degraded.min()) >= 0.0
        assert float(degraded.max()) <= 1.0
        assert len(plan) >= 1
        assert np.abs(degraded - phantom_slice["image"]).mean() > 1e-3


def test_low_dose_needs_hu():
    params = copy.deepcopy(PARAMS)
    for name in FAULT_NAMES:
        params[name]["probability"] = 0.0
    params["low_dose"]["probability"] = 1.0
    image = np.full((SIZE, SIZE), 0.4, dtype=np.float32)

    _, plan = degrade_slice(image, np.random.default_rng(0), params)

    assert set(plan) == {"low_dose"}
    assert "noise_sigma" in plan["low_dose"]
    assert "dose_fraction" not in plan["low_dose"]


def test_no_fallback_noise_without_hu_picks_another_fault():
    params = copy.deepcopy(PARAMS)
    for name in FAULT_NAMES:
        params[name]["probability"] = 0.0
    params["low_dose"]["probability"] = 1.0
    params["low_dose"]["fallback_noise_sigma"] = None

    for seed in range(10):
        plan = draw_fault_plan(np.random.default_rng(seed), params, has_hu=False)

        assert "low_dose" not in plan
        assert len(plan) == 1


def test_fault_probability_is_respected():
    params = copy.deepcopy(PARAMS)
    params["haze"]["probability"] = 1.0
    params["blur"]["probability"] = 0.0
    rng = np.random.default_rng(0)
    plans = [draw_fault_plan(rng, params, has_hu=True) for _ in range(50)]

    assert all("haze" in plan for plan in plans)
    assert not any("blur" in plan for plan in plans)


def test_severities_stay_in_their_ranges():
    rng = np.random.default_rng(1)
    for _ in range(50):
        plan = draw_fault_plan(rng, PARAMS, has_hu=True)
        if "low_dose" in plan:
            assert 0.05 <= plan["low_dose"]["dose_fraction"] <= 0.3
        if "haze" in plan:
            assert 0.5 <= plan["haze"]["transmission"] <= 0.9
            assert 0.4 <= plan["haze"]["airlight"] <= 0.9


def test_plan_description_names_faults():
    plan = {"low_dose": {"dose_fraction": 0.12}, "haze": {"transmission": 0.7, "airlight": 0.8}}

    assert describe_fault_plan(plan) == "low_dose(dose_fraction=0.12) + haze(transmission=0.7, airlight=0.8)"
    assert describe_fault_plan({}) == "none"


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("haze", "probability"), 1.5, "probability"),
        (("blur", "sigma_px"), [2.0, 1.0], "sigma_px"),
        (("exposure", "gain"), None, "gain"),
    ],
)
def test_invalid_params_rejected(path, value, message):
    params = copy.deepcopy(PARAMS)
    params[path[0]][path[1]] = value

    with pytest.raises(ValueError, match=message):
        validate_degradation_params(params)


def test_phantom_twin_uses_degradation_faults(phantom_slice):
    """The twin equals the degradation functions applied by hand with the same draws."""
    low_quality = {**DEFAULT["low_quality"], "n_angles": 45, "fault_probability": 1.0}
    twin = make_poor_quality_twin(phantom_slice["hu"], low_quality, SPACING_MM, np.random.default_rng(11))

    rng = np.random.default_rng(11)
    dose = rng.uniform(*low_quality["dose_fraction"])
    rng.random()
    use_exposure = rng.random() < 0.5
    shift_hu = rng.uniform(*low_quality["exposure_shift_hu"])
    factor = rng.uniform(*low_quality["contrast_factor"])
    expected = low_dose_fault(phantom_slice["hu"], dose, rng, spacing_mm=SPACING_MM, n_angles=45)
    if use_exposure:
        expected = exposure_fault(expected, offset=shift_hu, domain="hu")
    else:
        expected = contrast_fault(expected, factor, domain="hu")

    np.testing.assert_array_equal(twin, np.clip(expected, -1024.0, 3071.0))
