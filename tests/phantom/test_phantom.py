"""Tests for the synthetic chest CT phantom."""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy.signal import find_peaks

from lungct_kedro.phantom import DEFAULT, generate_phantom_slices, render_phantom_patient
from lungct_kedro.phantom.generator import plan_cohort
from lungct_kedro.readers.base import RawSlice

# A cohort small enough to generate with its twins in about a second.
SMALL = {**DEFAULT, "n_patients": 3, "slices_per_patient": 3, "image_size": 64}

# Allowance for the image noise (a few HU) added after lesions are painted.
NOISE_ALLOWANCE_HU = 40.0


@pytest.fixture(scope="module")
def small_slices() -> list[RawSlice]:
    return list(generate_phantom_slices(SMALL, seed=0))


@pytest.fixture(scope="module")
def default_patients() -> list:
    """Render the default cohort without poor-quality twins (about 1 s)."""
    return [render_phantom_patient(DEFAULT, 0, index) for index in range(DEFAULT["n_patients"])]


def expected_severity(burden: float, thresholds: list[float]) -> str | None:
    if burden == 0.0:
        return None
    if burden < thresholds[0]:
        return "ordinary"
    if burden < thresholds[1]:
        return "severe"
    return "critical"


def histogram_peaks_hu(hu: np.ndarray) -> list[float]:
    """Return the centres (HU) of the prominent peaks of a 20 HU histogram."""
    counts, edges = np.histogram(hu, bins=np.arange(-1100.0, 201.0, 20.0))
    peaks, _ = find_peaks(counts, prominence=0.01 * hu.size)
    return [float(edges[index] + 10.0) for index in peaks]


def test_slice_count_and_order(small_slices):
    keys = [(item.patient_key, item.slice_index) for item in small_slices]

    assert len(small_slices) == SMALL["n_patients"] * SMALL["slices_per_patient"]
    assert keys == [(f"phantom-{p:03d}", s) for p in range(3) for s in range(3)]


def test_slice_fields_follow_contract(small_slices):
    size = SMALL["image_size"]
    spacing = SMALL["field_of_view_mm"] / size
    for item in small_slices:
        assert item.is_hu is True
        assert item.pixels.shape == (size, size)
        assert item.pixels.dtype == np.float32
        assert item.lowq_pixels.shape == (size, size)
        assert item.lowq_pixels.dtype == np.float32
        assert item.mask.shape == (size, size)
        assert item.mask.dtype == np.uint8
        assert set(np.unique(item.mask)) <= {0, 1, 2}
        assert re.fullmatch(r"patient-\d{3}/slice-\d{3}", item.file_key)
        assert item.file_key.endswith(f"slice-{item.slice_index:03d}")
        assert item.volume_key == item.patient_key
        assert item.spacing_mm == pytest.approx((spacing, spacing))
        assert item.slice_thickness_mm == SMALL["slice_thickness_mm"]
        assert set(item.labels) == {"severity", "lesion_burden"}


def test_generated_slices_match_render(small_slices):
    patient = render_phantom_patient(SMALL, 0, 1)
    generated = [item for item in small_slices if item.patient_key == "phantom-001"]

    for item in generated:
        assert np.array_equal(item.pixels, patient.hu[item.slice_index])
        assert np.array_equal(item.mask, patient.mask[item.slice_index])
        assert item.labels["severity"] == patient.severity
        assert item.labels["lesion_burden"] == patient.lesion_burden


@pytest.mark.parametrize("image_size", [64, 128, 256])
def test_histogram_has_tissue_peaks(image_size):
    params = {**DEFAULT, "image_size": image_size, "slices_per_patient": 3, "n_patients": 4}
    healthy = plan_cohort(params, 0).index(None)
    hu = render_phantom_patient(params, 0, healthy).hu[1]
    peaks = histogram_peaks_hu(hu)

    assert any(-1040.0 <= peak <= -960.0 for peak in peaks), f"no air peak in {peaks}"
    assert any(-900.0 <= peak <= -800.0 for peak in peaks), f"no lung peak in {peaks}"
    assert any(-10.0 <= peak <= 70.0 for peak in peaks), f"no soft-tissue peak in {peaks}"


@pytest.mark.parametrize("image_size", [64, 128, 256])
def test_bone_present_on_every_slice(image_size):
    params = {**DEFAULT, "image_size": image_size, "slices_per_patient": 3, "n_patients": 1}
    patient = render_phantom_patient(params, 0, 0)

    for index in range(3):
        assert (patient.hu[index] >= 300.0).sum() >= 10
    assert patient.hu.max() >= 700.0


def test_lungs_near_lung_density(default_patients):
    for patient in default_patients:
        lung_hu = patient.hu[patient.lung & (patient.mask == 0)]
        assert -900.0 <= np.median(lung_hu) <= -800.0


def test_lesions_lie_inside_lungs(default_patients):
    for patient in default_patients:
        outside = (patient.mask > 0) & ~patient.lung
        assert outside.sum() == 0, f"patient {patient.index} has {outside.sum()} lesion pixels outside the lungs"


@pytest.mark.parametrize(
    ("label", "low_hu", "high_hu"),
    [
        (1, -700.0, -300.0),
        (2, -100.0, 50.0),
    ],
)
def test_mask_matches_lesion_hu(default_patients, label, low_hu, high_hu):
    values = np.concatenate([patient.hu[patient.mask == label] for patient in default_patients])

    assert values.size > 0
    assert values.min() >= low_hu - NOISE_ALLOWANCE_HU
    assert values.max() <= high_hu + NOISE_ALLOWANCE_HU


def test_severity_follows_burden(default_patients):
    thresholds = DEFAULT["severity_thresholds"]
    for patient in default_patients:
        burden = (patient.mask > 0).sum() / patient.lung.sum()
        assert patient.lesion_burden == pytest.approx(burden)
        assert patient.severity == expected_severity(burden, thresholds)


def test_healthy_patients_have_no_lesions(default_patients):
    healthy = [patient for patient in default_patients if patient.severity is None]

    assert len(healthy) == round(DEFAULT["healthy_fraction"] * DEFAULT["n_patients"])
    for patient in healthy:
        assert not patient.mask.any()
        assert patient.lesion_burden == 0.0


def test_default_cohort_has_every_severity(default_patients):
    severities = {patient.severity for patient in default_patients}

    assert "ordinary" in severities
    assert "severe" in severities
    assert "critical" in severities


@pytest.mark.parametrize(("healthy_fraction", "expected_healthy"), [(0.0, 0), (0.5, 2), (1.0, 4)])
def test_healthy_fraction_sets_count(healthy_fraction, expected_healthy):
    params = {**DEFAULT, "n_patients": 4, "healthy_fraction": healthy_fraction}

    assert plan_cohort(params, 7).count(None) == expected_healthy


def test_lesions_continue_across_slices(default_patients):
    lesion_patients = [patient for patient in default_patients if patient.severity is not None]
    for patient in lesion_patients:
        lesion = patient.mask > 0
        for index in range(lesion.shape[0] - 1):
            if lesion[index].any() and lesion[index + 1].any():
                assert (lesion[index] & lesion[index + 1]).any(), f"patient {patient.index} slices {index}-{index + 1}"


def test_neighbour_slices_are_similar(default_patients):
    for patient in default_patients:
        neighbour_change = np.abs(patient.hu[1] - patient.hu[0]).mean()
        distant_change = np.abs(patient.hu[-1] - patient.hu[0]).mean()
        assert neighbour_change < distant_change


@pytest.mark.parametrize("field", ["pixels", "mask", "lowq_pixels"])
def test_same_seed_is_identical(field):
    params = {**SMALL, "n_patients": 2, "slices_per_patient": 2}
    first = list(generate_phantom_slices(params, seed=11))
    second = list(generate_phantom_slices(params, seed=11))

    for left, right in zip(first, second, strict=True):
        assert np.array_equal(getattr(left, field), getattr(right, field))


@pytest.mark.parametrize("field", ["pixels", "lowq_pixels"])
def test_other_seed_differs(field):
    params = {**SMALL, "n_patients": 1, "slices_per_patient": 2}
    first = list(generate_phantom_slices(params, seed=11))
    second = list(generate_phantom_slices(params, seed=12))

    for left, right in zip(first, second, strict=True):
        assert not np.array_equal(getattr(left, field), getattr(right, field))


def test_twin_differs_from_clean(small_slices):
    for item in small_slices:
        assert np.abs(item.lowq_pixels - item.pixels).mean() > 5.0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"image_size": 16}, "image_size"),
        ({"n_patients": 0}, "n_patients"),
        ({"healthy_fraction": 1.5}, "healthy_fraction"),
        ({"severity_thresholds": [0.2, 0.08]}, "severity_thresholds"),
        ({"severity_thresholds": [0.1]}, "severity_thresholds"),
        ({"low_quality": {**DEFAULT["low_quality"], "dose_fraction": [0.0, 0.3]}}, "dose_fraction"),
        ({"low_quality": {**DEFAULT["low_quality"], "contrast_factor": [0.8, 0.5]}}, "contrast_factor"),
    ],
)
def test_invalid_params_raise(override, message):
    with pytest.raises(ValueError, match=message):
        next(generate_phantom_slices({**SMALL, **override}, seed=0))


def test_missing_key_raises():
    params = {key: value for key, value in SMALL.items() if key != "field_of_view_mm"}

    with pytest.raises(ValueError, match="field_of_view_mm"):
        next(generate_phantom_slices(params, seed=0))


@pytest.mark.parametrize("seed", [-1, 1.5, "0"])
def test_invalid_seed_raises(seed):
    with pytest.raises(ValueError, match="seed"):
        next(generate_phantom_slices(SMALL, seed=seed))
