"""Pneumonia-like lesions of the phantom: shape, class map, HU and severity.

Lesions are drawn for a whole patient volume at once, so neighbouring slices
show the same lesions growing and shrinking. The lesion field is a sum of 3D
Gaussian blobs roughened by smooth noise. Thresholding it inside the lungs at
the right quantile involves the requested share of lung. The highest part of
the involved region becomes consolidation and the rest ground-glass opacity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

GGO_HU_RANGE = (-700.0, -300.0)
"""Ground-glass opacity density in HU (mask class 1)."""
CONSOLIDATION_HU_RANGE = (-100.0, 50.0)
"""Consolidation density in HU (mask class 2)."""

# Lesion HU is painted 10 HU inside each range so that the few HU of image
# noise added afterwards rarely push a pixel out of it.
_PAINT_MARGIN_HU = 10.0

SEVERITY_LEVELS = ("ordinary", "severe", "critical")

# Share of the lesion volume that is consolidation, per severity level.
_CONSOLIDATION_SHARE = {"ordinary": (0.0, 0.25), "severe": (0.15, 0.45), "critical": (0.3, 0.6)}


@dataclass(frozen=True)
class PatientLesions:
    """Lesions of one patient volume.

    Attributes:
        mask: uint8 class map of shape (slices, rows, columns): 0 none,
            1 ground-glass opacity, 2 consolidation. Non-zero only inside the lungs.
        level: float field of the same shape in [0, 1], the position of each
            lesion pixel within its class (0 at the class edge, 1 at its densest).
        burden: Lesion pixels divided by lung pixels over all slices.
    """

    mask: np.ndarray
    level: np.ndarray
    burden: float


def severity_from_burden(burden: float, thresholds: Sequence[float]) -> str | None:
    """Classify a patient's lesion burden.

    Args:
        burden: Fraction of lung area involved over the patient's slices.
        thresholds: Two increasing cut points (ordinary/severe, severe/critical).

    Returns:
        None for a burden of 0, ``"ordinary"`` below the first threshold,
        ``"severe"`` from the first up to the second, ``"critical"`` from the
        second threshold on.
    """
    if burden <= 0.0:
        return None
    if burden < thresholds[0]:
        return "ordinary"
    if burden < thresholds[1]:
        return "severe"
    return "critical"


def draw_target_burden(severity: str, thresholds: Sequence[float], rng: np.random.Generator) -> float:
    """Draw a lesion burden that lies well inside the band of ``severity``.

    Each band keeps 15% of its width away from the thresholds, so the burden
    actually reached after thresholding falls in the same band.
    """
    low_cut, high_cut = thresholds
    if severity == "ordinary":
        return rng.uniform(0.2 * low_cut, 0.85 * low_cut)
    if severity == "severe":
        margin = 0.15 * (high_cut - low_cut)
        return rng.uniform(low_cut + margin, high_cut - margin)
    return rng.uniform(high_cut + 0.1 * (1.0 - high_cut), high_cut + 0.4 * (1.0 - high_cut))


def draw_consolidation_share(severity: str, rng: np.random.Generator) -> float:
    """Draw the share of lesion volume that is consolidation for a severity level."""
    low, high = _CONSOLIDATION_SHARE[severity]
    return rng.uniform(low, high)


def build_patient_lesions(
    lung: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    z_mm: np.ndarray,
    target_burden: float,
    consolidation_share: float,
    roughness: np.ndarray,
    scale: float,
    rng: np.random.Generator,
) -> PatientLesions:
    """Place lesions in a patient's lungs.

    Args:
        lung: Boolean lung masks, shape (slices, rows, columns).
        x: Column coordinates in mm, shape (rows, columns).
        y: Row coordinates in mm, shape (rows, columns).
        z_mm: Slice positions in mm, shape (slices,).
        target_burden: Share of lung pixels to involve, in (0, 1).
        consolidation_share: Share of lesion pixels that become consolidation.
        roughness: Unit-variance smooth noise of the volume's shape that
            makes the blob outlines irregular.
        scale: Field of view divided by the nominal 360 mm.
        rng: Random generator for blob placement and size.

    Returns:
        The class map, the in-class level field and the burden reached.
    """
    mask = np.zeros(lung.shape, dtype=np.uint8)
    level = np.zeros(lung.shape, dtype=np.float64)
    lung_count = int(lung.sum())
    if lung_count == 0 or target_burden <= 0.0:
        return PatientLesions(mask=mask, level=level, burden=0.0)

    # Lesions favour the periphery and the dependent (posterior) lung.
    spacing_mm = float(abs(x[0, 1] - x[0, 0]))
    weight = np.zeros(lung.shape, dtype=np.float64)
    posterior = (y - y.min()) / (y.max() - y.min())
    for index in range(lung.shape[0]):
        depth_mm = ndimage.distance_transform_edt(lung[index]) * spacing_mm
        weight[index] = lung[index] * (1.0 + 3.0 * np.exp(-depth_mm / (15.0 * scale))) * (1.0 + posterior)
    candidates = np.flatnonzero(weight)
    probabilities = weight.ravel()[candidates] / weight.ravel()[candidates].sum()

    n_blobs = 1 + int(round(target_burden * 25.0))
    chosen = rng.choice(candidates, size=n_blobs, p=probabilities)
    field = np.zeros(lung.shape, dtype=np.float64)
    for flat_index in chosen:
        slice_index, row, column = np.unravel_index(flat_index, lung.shape)
        radius = scale * rng.uniform(12.0, 28.0) * (1.0 + 1.5 * target_burden)
        half_x = radius * rng.uniform(0.7, 1.3)
        half_y = radius * rng.uniform(0.7, 1.3)
        half_z = rng.uniform(8.0, 20.0)
        angle = rng.uniform(0.0, np.pi)
        dx = x - x[row, column]
        dy = y - y[row, column]
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        in_plane = (u / half_x) ** 2 + (v / half_y) ** 2
        along_z = ((z_mm - z_mm[slice_index]) / half_z) ** 2
        field += np.exp(-0.5 * (in_plane[None, :, :] + along_z[:, None, None]))
    field *= 1.0 + 0.6 * roughness

    threshold = np.quantile(field[lung], 1.0 - target_burden)
    lesion = lung & (field > threshold)
    if not lesion.any():
        return PatientLesions(mask=mask, level=level, burden=0.0)
    dense_threshold = np.quantile(field[lesion], 1.0 - consolidation_share) if consolidation_share > 0 else np.inf
    consolidation = lesion & (field > dense_threshold)
    ground_glass = lesion & ~consolidation

    mask[ground_glass] = 1
    mask[consolidation] = 2
    top = float(field[lesion].max())
    ggo_span = max(min(dense_threshold, top) - threshold, 1e-12)
    level[ground_glass] = np.clip((field[ground_glass] - threshold) / ggo_span, 0.0, 1.0)
    if consolidation.any():
        dense_span = max(top - dense_threshold, 1e-12)
        level[consolidation] = np.clip((field[consolidation] - dense_threshold) / dense_span, 0.0, 1.0)

    return PatientLesions(mask=mask, level=level, burden=float(lesion.sum()) / lung_count)


def paint_lesions(hu: np.ndarray, lesions: PatientLesions, texture: np.ndarray, parenchyma_hu: float) -> None:
    """Set lesion pixels of ``hu`` (modified in place) from the class map.

    Ground-glass opacity keeps a faint copy of the underlying vessels, as on
    real CT. Every lesion pixel is then clipped into its class range minus a
    10 HU margin, so the mask and the HU always agree.
    """
    ground_glass = lesions.mask == 1
    ggo_low, ggo_high = GGO_HU_RANGE[0] + _PAINT_MARGIN_HU, GGO_HU_RANGE[1] - _PAINT_MARGIN_HU
    vessels = np.clip(hu[ground_glass] - parenchyma_hu, 0.0, None)
    ggo_hu = -660.0 + 260.0 * lesions.level[ground_glass] + 0.3 * vessels + 25.0 * texture[ground_glass]
    hu[ground_glass] = np.clip(ggo_hu, ggo_low, ggo_high)

    consolidation = lesions.mask == 2
    dense_low, dense_high = CONSOLIDATION_HU_RANGE[0] + _PAINT_MARGIN_HU, CONSOLIDATION_HU_RANGE[1] - _PAINT_MARGIN_HU
    dense_hu = -60.0 + 80.0 * lesions.level[consolidation] + 12.0 * texture[consolidation]
    hu[consolidation] = np.clip(dense_hu, dense_low, dense_high)
