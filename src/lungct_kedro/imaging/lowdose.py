"""Low-dose CT simulated in the sinogram domain, and exposure and contrast faults.

``simulate_low_dose`` follows the usual photon-counting model: the slice is
turned into linear attenuation, forward projected, given Poisson noise at the
requested dose and reconstructed with filtered back-projection. The faults
are simple intensity maps applied after reconstruction.
"""

from __future__ import annotations

import math

import numpy as np
from skimage.transform import iradon, radon

MU_WATER_PER_MM = 0.0192
"""Linear attenuation of water in 1/mm at about 70 keV effective energy."""


def _validate_hu_image(hu: np.ndarray) -> np.ndarray:
    """Return ``hu`` as float64, raising ValueError unless it is a finite 2D array."""
    image = np.asarray(hu, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"expected a 2D slice in HU, got an array with shape {image.shape}. Pass one slice at a time")
    if image.size == 0:
        raise ValueError(f"expected a non-empty 2D slice in HU, got shape {image.shape}")
    if np.isnan(image).any():
        n_nan = int(np.isnan(image).sum())
        raise ValueError(f"HU slice contains {n_nan} NaN values. Replace them (for example with -1000 HU) first")
    if np.isinf(image).any():
        n_infinite = int(np.isinf(image).sum())
        raise ValueError(f"HU slice contains {n_infinite} infinite values. Clip it to a finite HU range first")
    return image


def hu_to_attenuation(hu: np.ndarray) -> np.ndarray:
    """Convert Hounsfield units to linear attenuation in 1/mm.

    Values below -1000 HU map to 0 because attenuation cannot be negative.
    """
    return np.clip(MU_WATER_PER_MM * (1.0 + np.asarray(hu, dtype=np.float64) / 1000.0), 0.0, None)


def attenuation_to_hu(mu_per_mm: np.ndarray) -> np.ndarray:
    """Convert linear attenuation in 1/mm to Hounsfield units."""
    return 1000.0 * (np.asarray(mu_per_mm, dtype=np.float64) / MU_WATER_PER_MM - 1.0)


def simulate_low_dose(
    hu: np.ndarray,
    dose_fraction: float,
    rng: np.random.Generator,
    *,
    incident_photons: float = 1e5,
    n_angles: int = 180,
    pixel_spacing_mm: float = 1.0,
) -> np.ndarray:
    """Simulate a reduced-dose acquisition of one axial slice.

    The slice is converted to attenuation (mu = mu_water * (1 + HU / 1000),
    negative values clipped to 0), padded with air to its diagonal so that
    the whole square lies inside the scanned circle, and forward projected
    over ``n_angles`` angles in [0, 180) degrees. Each detector bin receives
    Poisson counts with mean ``incident_photons * dose_fraction * exp(-p)``,
    where p is the line integral of attenuation. The noisy line integrals
    ``-log(max(counts, 1) / (incident_photons * dose_fraction))`` are
    reconstructed by filtered back-projection with a ramp filter, converted
    back to HU and cropped to the input shape.

    Noise grows as ``dose_fraction`` falls, roughly with its inverse square
    root. At ``dose_fraction=1`` the output still carries the quantum noise
    of ``incident_photons`` and the small interpolation error of the
    projector.

    Args:
        hu: 2D slice in Hounsfield units, any shape (need not be square).
        dose_fraction: Dose relative to the reference acquisition, in (0, 1].
        rng: Random generator that draws the Poisson counts.
        incident_photons: Unattenuated photons per detector bin at full dose.
            Must be positive.
        n_angles: Number of projection angles over 180 degrees, at least 2.
        pixel_spacing_mm: Pixel size in millimetres, which scales the line
            integrals. Must be positive.

    Returns:
        float32 array in HU with the shape of ``hu``.

    Raises:
        ValueError: If ``dose_fraction`` is not in (0, 1], ``incident_photons``
            or ``pixel_spacing_mm`` is not positive, ``n_angles`` is below 2,
            or ``hu`` is not a 2D array of finite values.
    """
    if not (0.0 < dose_fraction <= 1.0):
        raise ValueError(f"dose_fraction must be in (0, 1], got {dose_fraction}")
    if not (incident_photons > 0.0 and math.isfinite(incident_photons)):
        raise ValueError(f"incident_photons must be a positive finite number, got {incident_photons}")
    if int(n_angles) != n_angles or n_angles < 2:
        raise ValueError(f"n_angles must be an integer of at least 2, got {n_angles}")
    if not (pixel_spacing_mm > 0.0 and math.isfinite(pixel_spacing_mm)):
        raise ValueError(f"pixel_spacing_mm must be a positive finite number of millimetres, got {pixel_spacing_mm}")
    image = _validate_hu_image(hu)

    # radon(circle=True) ignores everything outside the inscribed circle, so
    # pad with air until the circle contains the original corners.
    height, width = image.shape
    side = int(math.ceil(math.hypot(height, width))) + 2
    top = (side - height) // 2
    left = (side - width) // 2
    attenuation = np.zeros((side, side), dtype=np.float64)
    attenuation[top : top + height, left : left + width] = hu_to_attenuation(image)

    angles_deg = np.linspace(0.0, 180.0, int(n_angles), endpoint=False)
    line_integrals = radon(attenuation, theta=angles_deg, circle=True) * pixel_spacing_mm

    blank_counts = incident_photons * dose_fraction
    counts = rng.poisson(blank_counts * np.exp(-line_integrals))
    noisy_integrals = -np.log(np.maximum(counts, 1) / blank_counts)

    reconstruction = iradon(
        noisy_integrals / pixel_spacing_mm,
        theta=angles_deg,
        output_size=side,
        filter_name="ramp",
        circle=True,
    )
    cropped = reconstruction[top : top + height, left : left + width]
    return attenuation_to_hu(cropped).astype(np.float32)


def apply_exposure_fault(hu: np.ndarray, shift_hu: float, gain: float = 1.0) -> np.ndarray:
    """Apply a calibration error that scales attenuation and offsets HU.

    The result is ``(hu + 1000) * gain - 1000 + shift_hu``. The gain scales
    attenuation relative to air, so air stays at -1000 HU unless
    ``shift_hu`` moves it, and ``shift_hu`` moves every pixel by the same
    number of HU.

    Args:
        hu: Array in Hounsfield units, any shape.
        shift_hu: Offset added to every pixel, in HU.
        gain: Attenuation scale factor, positive (1 leaves the image as is).

    Returns:
        float32 array of the same shape. The input is not modified.

    Raises:
        ValueError: If ``gain`` is not positive and finite, ``shift_hu`` is
            not finite, or ``hu`` contains NaN.
    """
    if not (gain > 0.0 and math.isfinite(gain)):
        raise ValueError(f"gain must be a positive finite number, got {gain}")
    if not math.isfinite(shift_hu):
        raise ValueError(f"shift_hu must be a finite number of HU, got {shift_hu}")
    image = np.asarray(hu, dtype=np.float64)
    if np.isnan(image).any():
        raise ValueError("HU array contains NaN values. Replace them (for example with -1000 HU) first")
    return ((image + 1000.0) * gain - 1000.0 + shift_hu).astype(np.float32)


def apply_contrast_fault(hu: np.ndarray, factor: float, centre_hu: float | None = None) -> np.ndarray:
    """Compress HU values toward a centre value, lowering contrast.

    The result is ``centre_hu + factor * (hu - centre_hu)``.

    Args:
        hu: Array in Hounsfield units, any shape.
        factor: Contrast scale in (0, 1]. A factor of 1 leaves the image
            as is and smaller values flatten it.
        centre_hu: Value that stays fixed, in HU. Defaults to the mean of
            ``hu``.

    Returns:
        float32 array of the same shape. The input is not modified.

    Raises:
        ValueError: If ``factor`` is not in (0, 1], ``centre_hu`` is not
            finite, or ``hu`` is empty or contains NaN.
    """
    if not (0.0 < factor <= 1.0):
        raise ValueError(f"contrast factor must be in (0, 1], got {factor}")
    image = np.asarray(hu, dtype=np.float64)
    if image.size == 0:
        raise ValueError("HU array is empty. Pass at least one pixel")
    if np.isnan(image).any():
        raise ValueError("HU array contains NaN values. Replace them (for example with -1000 HU) first")
    if centre_hu is None:
        centre_hu = float(image.mean())
    elif not math.isfinite(centre_hu):
        raise ValueError(f"centre_hu must be a finite number of HU, got {centre_hu}")
    return (centre_hu + factor * (image - centre_hu)).astype(np.float32)
