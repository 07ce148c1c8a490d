"""Deterministic synthetic chest CT cohort, the project's default data source.

Each patient is a short contiguous series of axial slices in HU with a
lesion class map and a severity label derived from the lesion burden. Every
slice also has a poor-quality twin: a simulated low-dose acquisition, some
of them with an exposure or contrast fault on top. The same parameters and
seed give byte-identical output.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from lungct_kedro.phantom.anatomy import NOMINAL_FOV_MM, draw_patient_anatomy, render_slice_anatomy
from lungct_kedro.phantom.lesions import (
    SEVERITY_LEVELS,
    build_patient_lesions,
    draw_consolidation_share,
    draw_target_burden,
    paint_lesions,
    severity_from_burden,
)
from lungct_kedro.phantom.params import validate_phantom_params, validate_seed
from lungct_kedro.phantom.twin import make_poor_quality_twin
from lungct_kedro.readers.base import RawSlice

logger = logging.getLogger(__name__)

# Stream ids mixed into the seed so that each use of randomness has its own stream.
_COHORT_STREAM = 0
_PATIENT_STREAM = 1
_LOW_QUALITY_STREAM = 2


@dataclass(frozen=True)
class PhantomPatient:
    """One rendered phantom patient before the poor-quality twin is made.

    Attributes:
        index: Patient number in the cohort, from 0.
        hu: float32 volume in HU, shape (slices, rows, columns), slice 0 most superior.
        mask: uint8 class map of the same shape (0 background,
            1 ground-glass opacity, 2 consolidation).
        lung: Boolean lung mask of the same shape (vessels and lesions
            included, airways excluded).
        body: Boolean body-outline mask of the same shape.
        severity: ``"ordinary"``, ``"severe"``, ``"critical"`` or None for a
            patient without lesions.
        lesion_burden: Lesion pixels divided by lung pixels over all slices.
        spacing_mm: In-plane pixel spacing (row, column) in millimetres.
        slice_thickness_mm: Slice thickness and spacing in millimetres.
    """

    index: int
    hu: np.ndarray
    mask: np.ndarray
    lung: np.ndarray
    body: np.ndarray
    severity: str | None
    lesion_burden: float
    spacing_mm: tuple[float, float]
    slice_thickness_mm: float


def plan_cohort(params: Mapping[str, Any], seed: int) -> list[str | None]:
    """Assign each patient the severity its lesions will be drawn for.

    ``healthy_fraction * n_patients``, rounded half up, randomly chosen
    patients get no lesions (None). The others cycle through ordinary, severe and critical in
    a random order, so every level appears once there are three lesion
    patients.

    Args:
        params: Validated phantom parameters.
        seed: Non-negative integer seed.

    Returns:
        The planned severity per patient, in patient order.
    """
    n_patients = int(params["n_patients"])
    n_healthy = int(math.floor(params["healthy_fraction"] * n_patients + 0.5))
    rng = np.random.default_rng([seed, _COHORT_STREAM])
    order = rng.permutation(n_patients)
    plan: list[str | None] = [None] * n_patients
    for rank, patient in enumerate(order[n_healthy:]):
        plan[int(patient)] = SEVERITY_LEVELS[rank % len(SEVERITY_LEVELS)]
    return plan


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int, int], sigma_px: tuple[float, float, float]
) -> np.ndarray:
    """Return Gaussian-smoothed white noise rescaled to zero mean and unit variance."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=sigma_px, mode="reflect")
    field -= field.mean()
    return field / max(float(field.std()), 1e-12)


def _slice_positions(
    n_slices: int, slice_thickness_mm: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Place a contiguous series in the chest.

    Returns:
        Slice positions in mm from the lung apex, and the same positions as
        fractions of the chest height, clipped to [0, 1] when the series is
        longer than the chest.
    """
    chest_height_mm = rng.uniform(260.0, 320.0)
    series_length_mm = (n_slices - 1) * slice_thickness_mm
    spare_mm = chest_height_mm - series_length_mm
    if spare_mm > 0.06 * chest_height_mm:
        start_mm = rng.uniform(0.03 * chest_height_mm, spare_mm - 0.03 * chest_height_mm)
    else:
        start_mm = spare_mm / 2.0
    z_mm = start_mm + slice_thickness_mm * np.arange(n_slices)
    return z_mm, np.clip(z_mm / chest_height_mm, 0.0, 1.0)


def render_phantom_patient(params: Mapping[str, Any], seed: int, patient_index: int) -> PhantomPatient:
    """Render the clean volume, class map and masks of one phantom patient.

    ``generate_phantom_slices`` yields exactly these ``hu`` and ``mask``
    slices, so tests and tools can inspect the lung and body masks behind a
    generated slice.

    Args:
        params: Phantom parameters with every key of ``DEFAULT``.
        seed: Non-negative integer seed of the cohort.
        patient_index: Patient number in [0, n_patients).

    Returns:
        The rendered patient.

    Raises:
        ValueError: If ``params`` or ``seed`` is invalid, or ``patient_index``
            is outside [0, n_patients).
    """
    validate_phantom_params(params)
    validate_seed(seed)
    n_patients = int(params["n_patients"])
    if not 0 <= patient_index < n_patients:
        raise ValueError(f"patient_index must be in [0, {n_patients}), got {patient_index}")
    return _render_patient(params, seed, patient_index, plan_cohort(params, seed)[patient_index])


def _render_patient(
    params: Mapping[str, Any], seed: int, patient_index: int, planned_severity: str | None
) -> PhantomPatient:
    """Render one patient of an already validated cohort."""
    size = int(params["image_size"])
    n_slices = int(params["slices_per_patient"])
    fov_mm = float(params["field_of_view_mm"])
    thickness_mm = float(params["slice_thickness_mm"])
    spacing_mm = fov_mm / size
    scale = fov_mm / NOMINAL_FOV_MM
    rng = np.random.default_rng([seed, _PATIENT_STREAM, patient_index])

    anatomy = draw_patient_anatomy(rng, fov_mm)
    z_mm, t = _slice_positions(n_slices, thickness_mm, rng)
    coordinates = (np.arange(size) - (size - 1) / 2.0) * spacing_mm
    y, x = np.meshgrid(coordinates, coordinates, indexing="ij")

    # Texture sizes are given in mm and converted to pixels in-plane and to
    # slices along z, so structures persist over neighbouring slices.
    def sigma(in_plane_mm: float, along_z_mm: float) -> tuple[float, float, float]:
        return (along_z_mm / thickness_mm, in_plane_mm * scale / spacing_mm, in_plane_mm * scale / spacing_mm)

    shape = (n_slices, size, size)
    textures = {
        "soft": _smooth_noise(rng, shape, sigma(2.0, 2.0)),
        "parenchyma": _smooth_noise(rng, shape, sigma(4.0, 6.0)),
        "vessel": _smooth_noise(rng, shape, sigma(7.0, 10.0)),
        "segments": _smooth_noise(rng, shape, sigma(10.0, 10.0)),
        "dots": _smooth_noise(rng, shape, sigma(2.0, 6.0)),
    }
    hu = np.empty(shape, dtype=np.float64)
    lung = np.empty(shape, dtype=bool)
    body = np.empty(shape, dtype=bool)
    for index in range(n_slices):
        slice_textures = {name: field[index] for name, field in textures.items()}
        rendered = render_slice_anatomy(anatomy, float(t[index]), x, y, scale, slice_textures)
        hu[index] = rendered.hu
        lung[index] = rendered.lung
        body[index] = rendered.body
    # Partial-volume blur of the anatomy only, so lesion edges stay on the mask.
    hu = ndimage.gaussian_filter(hu, sigma=(0.0, 0.5, 0.5))

    lesion_roughness = _smooth_noise(rng, shape, sigma(6.0, 6.0))
    lesion_texture = _smooth_noise(rng, shape, sigma(3.0, 5.0))
    if planned_severity is None:
        mask = np.zeros(shape, dtype=np.uint8)
        burden = 0.0
    else:
        target = draw_target_burden(planned_severity, params["severity_thresholds"], rng)
        share = draw_consolidation_share(planned_severity, rng)
        lesions = build_patient_lesions(lung, x, y, z_mm, target, share, lesion_roughness, scale, rng)
        paint_lesions(hu, lesions, lesion_texture, anatomy.parenchyma_hu)
        mask = lesions.mask
        burden = lesions.burden

    noise_sd_hu = rng.uniform(3.0, 5.0)
    hu += rng.normal(0.0, noise_sd_hu, size=shape)
    return PhantomPatient(
        index=patient_index,
        hu=hu.astype(np.float32),
        mask=mask,
        lung=lung,
        body=body,
        severity=severity_from_burden(burden, params["severity_thresholds"]),
        lesion_burden=burden,
        spacing_mm=(spacing_mm, spacing_mm),
        slice_thickness_mm=thickness_mm,
    )


def generate_phantom_slices(params: Mapping[str, Any], seed: int) -> Iterator[RawSlice]:
    """Generate the phantom cohort slice by slice.

    Patients are rendered one at a time, so only one patient volume is in
    memory. Slice labels are the patient's: ``severity`` (``"ordinary"``,
    ``"severe"``, ``"critical"`` or None without lesions) and
    ``lesion_burden`` (lesion pixels over lung pixels across the patient's
    slices). Severity is ordinary below ``severity_thresholds[0]``, severe
    from there up to ``severity_thresholds[1]`` and critical above.

    Args:
        params: Phantom parameters with every key of ``DEFAULT``.
        seed: Non-negative integer seed. The same seed gives identical
            output, and a different seed gives different output.

    Yields:
        One ``RawSlice`` per patient and slice, in patient order and then
        from the most superior slice (``slice_index`` 0) down. ``pixels``
        and ``lowq_pixels`` are float32 HU and ``mask`` is the uint8 class map.

    Raises:
        ValueError: If ``params`` or ``seed`` is invalid (raised on the
            first ``next()``).
    """
    validate_phantom_params(params)
    validate_seed(seed)
    started = time.perf_counter()
    plan = plan_cohort(params, seed)
    digits = max(3, len(str(len(plan) - 1)))
    slice_digits = max(3, len(str(int(params["slices_per_patient"]) - 1)))
    n_slices = 0
    n_without_lesions = 0

    for patient_index, planned_severity in enumerate(plan):
        patient = _render_patient(params, seed, patient_index, planned_severity)
        twin_rng = np.random.default_rng([seed, _LOW_QUALITY_STREAM, patient_index])
        patient_key = f"phantom-{patient_index:0{digits}d}"
        labels = {"severity": patient.severity, "lesion_burden": patient.lesion_burden}
        n_without_lesions += patient.severity is None
        for slice_index in range(patient.hu.shape[0]):
            pixels = patient.hu[slice_index].copy()
            yield RawSlice(
                pixels=pixels,
                is_hu=True,
                file_key=f"patient-{patient_index:0{digits}d}/slice-{slice_index:0{slice_digits}d}",
                mask=patient.mask[slice_index].copy(),
                patient_key=patient_key,
                volume_key=patient_key,
                slice_index=slice_index,
                spacing_mm=patient.spacing_mm,
                slice_thickness_mm=patient.slice_thickness_mm,
                labels=dict(labels),
                lowq_pixels=make_poor_quality_twin(pixels, params["low_quality"], patient.spacing_mm[0], twin_rng),
            )
            n_slices += 1

    logger.info(
        "Generated %d phantom slices for %d patients (%d without lesions) in %.1f s",
        n_slices,
        len(plan),
        n_without_lesions,
        time.perf_counter() - started,
    )
