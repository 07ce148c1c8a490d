"""Chest anatomy of the phantom: per-patient geometry and per-slice rendering.

Geometry is in millimetres on an axial grid whose origin is the image
centre, with x toward the image right (patient left) and y toward the image
bottom (posterior). Sizes are nominal values for a 360 mm field of view and
scale with the field of view, so the body fills the image at any zoom. The
cranio-caudal position is a fraction ``t`` of the chest height, 0 at the
lung apex and 1 at the diaphragm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

AIR_HU = -1000.0
FAT_HU = -100.0
MUSCLE_HU = 45.0
MEDIASTINUM_HU = 35.0
BLOOD_HU = 45.0
LIVER_HU = 60.0
CSF_HU = 15.0
CORTICAL_BONE_HU = 800.0
CANCELLOUS_BONE_HU = 350.0
PARENCHYMA_HU = -860.0

NOMINAL_FOV_MM = 360.0
RIB_ANGLES_DEG = (40.0, 62.0, 84.0, 106.0, 128.0, 150.0)
"""Rib positions per side, measured from the anterior midline toward the back."""


@dataclass(frozen=True)
class PatientAnatomy:
    """Body geometry of one phantom patient, in millimetres.

    Attributes:
        body_centre_mm: Body outline centre (x, y).
        body_half_axes_mm: Half width and half depth of the body outline.
        body_exponent: Superellipse exponent of the outline (2 is an ellipse,
            larger values give a squarer chest).
        fat_mm: Subcutaneous fat thickness.
        muscle_mm: Chest wall muscle thickness at the front and sides.
        back_muscle_mm: Extra muscle behind the thoracic cavity, around the spine.
        mediastinum_half_width: Half width of the mediastinum as a fraction of
            the cavity half width.
        heart_scale: Heart size relative to the nominal heart.
        vertebra_radius_mm: Radius of the vertebral body.
        trachea_radius_mm: Inner radius of the trachea.
        rib_phase_deg: Angular offset of the ribs, which drifts with ``t``.
        parenchyma_hu: Mean lung parenchyma density in HU.
    """

    body_centre_mm: tuple[float, float]
    body_half_axes_mm: tuple[float, float]
    body_exponent: float
    fat_mm: float
    muscle_mm: float
    back_muscle_mm: float
    mediastinum_half_width: float
    heart_scale: float
    vertebra_radius_mm: float
    trachea_radius_mm: float
    rib_phase_deg: float
    parenchyma_hu: float


@dataclass(frozen=True)
class SliceAnatomy:
    """One rendered slice before lesions and noise.

    Attributes:
        hu: float64 image in HU.
        lung: Boolean mask of lung parenchyma (vessels included, airways excluded).
        body: Boolean mask of the body outline.
    """

    hu: np.ndarray
    lung: np.ndarray
    body: np.ndarray


def draw_patient_anatomy(rng: np.random.Generator, field_of_view_mm: float) -> PatientAnatomy:
    """Draw the body geometry of one patient, scaled to the field of view."""
    scale = field_of_view_mm / NOMINAL_FOV_MM
    return PatientAnatomy(
        body_centre_mm=(scale * rng.uniform(-6.0, 6.0), scale * rng.uniform(-4.0, 8.0)),
        body_half_axes_mm=(scale * rng.uniform(138.0, 160.0), scale * rng.uniform(98.0, 118.0)),
        body_exponent=rng.uniform(2.2, 2.8),
        fat_mm=scale * rng.uniform(6.0, 20.0),
        muscle_mm=scale * rng.uniform(8.0, 13.0),
        back_muscle_mm=scale * rng.uniform(22.0, 30.0),
        mediastinum_half_width=rng.uniform(0.18, 0.24),
        heart_scale=rng.uniform(0.85, 1.15),
        vertebra_radius_mm=scale * rng.uniform(14.0, 18.0),
        trachea_radius_mm=scale * rng.uniform(8.0, 10.5),
        rib_phase_deg=rng.uniform(-8.0, 8.0),
        parenchyma_hu=PARENCHYMA_HU + rng.uniform(-15.0, 15.0),
    )


def smoothstep(edge0: float, edge1: float, t: float) -> float:
    """Return the cubic Hermite step from 0 at ``edge0`` to 1 at ``edge1``."""
    x = min(max((t - edge0) / (edge1 - edge0), 0.0), 1.0)
    return x * x * (3.0 - 2.0 * x)


def ellipse_mask(
    x: np.ndarray,
    y: np.ndarray,
    centre: tuple[float, float],
    half_axes: tuple[float, float],
    angle_deg: float = 0.0,
    exponent: float = 2.0,
) -> np.ndarray:
    """Return the pixels inside a rotated (super)ellipse, in grid millimetres."""
    angle = np.deg2rad(angle_deg)
    dx = x - centre[0]
    dy = y - centre[1]
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    return np.abs(u / half_axes[0]) ** exponent + np.abs(v / half_axes[1]) ** exponent <= 1.0


def _paint_bone(
    hu: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    centre: tuple[float, float],
    half_axes: tuple[float, float],
    angle_deg: float = 0.0,
) -> np.ndarray:
    """Paint a bone with a cortical shell and cancellous core, returning its mask."""
    outer = ellipse_mask(x, y, centre, half_axes, angle_deg)
    inner = ellipse_mask(x, y, centre, (0.6 * half_axes[0], 0.6 * half_axes[1]), angle_deg)
    hu[outer] = CORTICAL_BONE_HU
    hu[inner] = CANCELLOUS_BONE_HU
    return outer


def render_slice_anatomy(
    anatomy: PatientAnatomy,
    t: float,
    x: np.ndarray,
    y: np.ndarray,
    scale: float,
    textures: dict[str, np.ndarray],
) -> SliceAnatomy:
    """Render the clean anatomy of one axial slice.

    Args:
        anatomy: Patient geometry from ``draw_patient_anatomy``.
        t: Cranio-caudal position, 0 at the lung apex and 1 at the diaphragm.
        x: Column coordinates in mm (image right = patient left), 2D.
        y: Row coordinates in mm (image bottom = posterior), 2D.
        scale: Field of view divided by the nominal 360 mm.
        textures: Unit-variance smooth noise fields of the grid's shape:
            ``soft`` (soft-tissue grain), ``parenchyma`` (lung density),
            ``vessel`` (its zero crossings become vessel lines), ``segments``
            (its positive part keeps those lines) and ``dots`` (its peaks
            become vessels seen end-on).

    Returns:
        The slice in HU with its lung and body masks.
    """
    hu = np.full(x.shape, AIR_HU)
    cx, cy = anatomy.body_centre_mm
    body_a, body_b = anatomy.body_half_axes_mm
    wall = anatomy.fat_mm + anatomy.muscle_mm

    body = ellipse_mask(x, y, (cx, cy), (body_a, body_b), exponent=anatomy.body_exponent)
    hu[body] = FAT_HU + 8.0 * textures["soft"][body]
    muscle_region = ellipse_mask(
        x, y, (cx, cy), (body_a - anatomy.fat_mm, body_b - anatomy.fat_mm), exponent=anatomy.body_exponent
    )
    hu[muscle_region] = MUSCLE_HU + 6.0 * textures["soft"][muscle_region]

    # The cavity sits forward in the chest so that the back keeps room for the spine.
    cavity_a = body_a - wall
    cavity_b = body_b - wall - anatomy.back_muscle_mm / 2.0
    cavity_y = cy - anatomy.back_muscle_mm / 2.0
    cavity = ellipse_mask(x, y, (cx, cavity_y), (cavity_a, cavity_b), exponent=2.0)
    hu[cavity] = MEDIASTINUM_HU + 5.0 * textures["soft"][cavity]

    # Lungs are small and posterior at the apex and widest in the mid chest.
    growth = smoothstep(0.0, 0.45, t)
    lung_scale = 0.6 + 0.4 * growth
    lung_y = cavity_y + 0.05 * cavity_b + 0.3 * cavity_b * (1.0 - growth)
    lungs = np.zeros(x.shape, dtype=bool)
    for side in (-1.0, 1.0):
        lung_centre = (cx + side * 0.52 * cavity_a, lung_y)
        lung_axes = (0.5 * cavity_a * lung_scale, 0.98 * cavity_b * lung_scale)
        lungs |= ellipse_mask(x, y, lung_centre, lung_axes, angle_deg=side * 8.0)
    lungs &= cavity

    mediastinum = ellipse_mask(
        x, y, (cx, cavity_y - 0.1 * cavity_b), (anatomy.mediastinum_half_width * cavity_a, 0.95 * cavity_b)
    )
    lungs &= ~mediastinum

    heart_size = smoothstep(0.38, 0.6, t) * (1.0 - 0.4 * smoothstep(0.88, 1.0, t)) * anatomy.heart_scale
    if heart_size > 0.05:
        heart = ellipse_mask(
            x,
            y,
            (cx + 0.14 * cavity_a, cavity_y - 0.18 * cavity_b),
            (0.4 * cavity_a * heart_size, 0.5 * cavity_b * heart_size),
            angle_deg=-30.0,
        )
        hu[heart] = BLOOD_HU + 4.0 * textures["soft"][heart]
        lungs &= ~heart

    # The liver dome rises into the right lung base first, the left side later.
    for side, start in ((-1.0, 0.8), (1.0, 0.88)):
        dome = smoothstep(start, 1.0, t)
        if dome > 0.02:
            liver_centre = (cx + side * 0.45 * cavity_a, cavity_y + 0.25 * cavity_b)
            liver = ellipse_mask(x, y, liver_centre, (0.7 * cavity_a * dome, 0.9 * cavity_b * dome))
            liver &= cavity
            hu[liver] = LIVER_HU + 5.0 * textures["soft"][liver]
            lungs &= ~liver

    vertebra_r = anatomy.vertebra_radius_mm
    vertebra_y = cavity_y + cavity_b - 0.35 * vertebra_r
    spine_guard = ellipse_mask(x, y, (cx, vertebra_y), (vertebra_r + 4.0 * scale, vertebra_r + 4.0 * scale))
    lungs &= ~spine_guard
    hu[spine_guard] = MUSCLE_HU
    _paint_bone(hu, x, y, (cx, vertebra_y), (vertebra_r, vertebra_r))
    canal_y = vertebra_y + vertebra_r + 8.0 * scale
    _paint_bone(hu, x, y, (cx, canal_y), (12.0 * scale, 11.0 * scale))
    _paint_bone(hu, x, y, (cx, canal_y + 22.0 * scale), (4.0 * scale, 13.0 * scale))
    canal = ellipse_mask(x, y, (cx, canal_y), (6.5 * scale, 6.0 * scale))
    hu[canal] = CSF_HU

    aorta_r = 11.0 * scale
    aorta_centre = (cx + vertebra_r + aorta_r + 2.0 * scale, vertebra_y - 0.4 * vertebra_r)
    aorta = ellipse_mask(x, y, aorta_centre, (aorta_r, aorta_r))
    hu[aorta] = BLOOD_HU
    lungs &= ~aorta

    if 0.08 <= t <= 0.78:
        sternum = ellipse_mask(x, y, (cx, cavity_y - cavity_b - 4.0 * scale), (13.0 * scale, 5.5 * scale))
        hu[sternum] = CORTICAL_BONE_HU
        hu[ellipse_mask(x, y, (cx, cavity_y - cavity_b - 4.0 * scale), (8.0 * scale, 2.5 * scale))] = CANCELLOUS_BONE_HU

    # Ribs cut the chest wall obliquely, so their angle drifts along z.
    rib_drift = anatomy.rib_phase_deg + 11.0 * np.sin(2.0 * np.pi * t * 4.0)
    rib_a = cavity_a + 0.5 * anatomy.muscle_mm
    rib_b = cavity_b + 0.5 * anatomy.muscle_mm
    for side in (-1.0, 1.0):
        for base_angle in RIB_ANGLES_DEG:
            angle = np.deg2rad(base_angle + rib_drift)
            rib_centre = (cx + side * rib_a * np.sin(angle), cavity_y - rib_b * np.cos(angle))
            tangent_deg = float(np.rad2deg(np.arctan2(rib_b * np.sin(angle), side * rib_a * np.cos(angle))))
            rib = _paint_bone(hu, x, y, rib_centre, (8.0 * scale, 3.8 * scale), angle_deg=tangent_deg)
            lungs &= ~rib

    lung_hu = _render_parenchyma(x, y, anatomy, cx, cavity_y, cavity_a, cavity_b, textures)
    hu[lungs] = lung_hu[lungs]

    airway = _airway_mask(x, y, t, cx, vertebra_y - vertebra_r - 16.0 * scale, anatomy.trachea_radius_mm, scale)
    if airway is not None:
        wall_mask = _dilate_mm(x, airway, 2.0 * scale)
        hu[wall_mask & ~lungs] = MEDIASTINUM_HU
        hu[airway] = AIR_HU
        lungs &= ~airway

    return SliceAnatomy(hu=hu, lung=lungs, body=body)


def _render_parenchyma(
    x: np.ndarray,
    y: np.ndarray,
    anatomy: PatientAnatomy,
    cx: float,
    cavity_y: float,
    cavity_a: float,
    cavity_b: float,
    textures: dict[str, np.ndarray],
) -> np.ndarray:
    """Return lung density in HU for every pixel: parenchyma plus vessel texture."""
    # Dependent (posterior) lung is slightly denser, as on supine CT.
    gradient = 25.0 * (y - cavity_y) / cavity_b
    density = anatomy.parenchyma_hu + gradient + 12.0 * textures["parenchyma"]

    # Vessels are thicker and brighter near the hila and fade toward the pleura.
    right_hilum_distance = np.hypot(x - (cx - 0.25 * cavity_a), y - cavity_y)
    left_hilum_distance = np.hypot(x - (cx + 0.25 * cavity_a), y - cavity_y)
    hilum_distance = np.minimum(right_hilum_distance, left_hilum_distance)
    hilum_weight = 0.3 + 0.7 * np.exp(-hilum_distance / (0.45 * cavity_a))
    # Zero crossings of a smooth field form closed loops, so a second field
    # cuts them into separate vessel segments.
    vessel_lines = np.exp(-((textures["vessel"] / (0.04 + 0.06 * hilum_weight)) ** 2))
    vessel_lines *= np.clip(2.0 * textures["segments"], 0.0, 1.0)
    vessel_dots = np.clip(textures["dots"] - 1.8, 0.0, 1.0)
    return density + 650.0 * hilum_weight * np.maximum(vessel_lines, vessel_dots)


def _airway_mask(
    x: np.ndarray, y: np.ndarray, t: float, cx: float, trachea_y: float, trachea_r: float, scale: float
) -> np.ndarray | None:
    """Return the airway lumen: the trachea above the carina, main bronchi below."""
    carina_t = 0.4
    if t < carina_t:
        return ellipse_mask(x, y, (cx, trachea_y), (trachea_r, 0.9 * trachea_r))
    if t < 0.65:
        progress = (t - carina_t) / (0.65 - carina_t)
        offset = trachea_r + 40.0 * scale * progress
        radius = trachea_r * (0.75 - 0.25 * progress)
        right_bronchus = ellipse_mask(x, y, (cx - offset, trachea_y + 4.0 * scale), (radius, radius))
        left_bronchus = ellipse_mask(x, y, (cx + offset, trachea_y + 4.0 * scale), (radius, radius))
        return right_bronchus | left_bronchus
    return None


def _dilate_mm(x: np.ndarray, mask: np.ndarray, radius_mm: float) -> np.ndarray:
    """Grow a mask by ``radius_mm`` using the grid's pixel size."""
    spacing = float(abs(x[0, 1] - x[0, 0]))
    iterations = max(1, int(round(radius_mm / spacing)))
    return ndimage.binary_dilation(mask, iterations=iterations)
