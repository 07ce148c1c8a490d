"""Poor-quality twin of a phantom slice: simulated low dose and occasional faults.

The faults are the HU forms of the degradation model in
``lungct_kedro.imaging.degrade``, which the dehazing pipeline also uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lungct_kedro.imaging.degrade import contrast_fault, exposure_fault, low_dose_fault

# Many scanners store 12-bit values with a -1024 HU intercept, so the twin is
# clipped to that range like a stored image would be.
STORED_HU_RANGE = (-1024.0, 3071.0)


def make_poor_quality_twin(
    hu: np.ndarray, low_quality: Mapping[str, Any], spacing_mm: float, rng: np.random.Generator
) -> np.ndarray:
    """Make the poor-quality twin of one slice.

    The slice is acquired again at a dose fraction drawn from
    ``low_quality["dose_fraction"]``. With probability
    ``low_quality["fault_probability"]`` an exposure fault (a HU shift drawn
    from ``exposure_shift_hu``) or a contrast fault (a factor drawn from
    ``contrast_factor``) is applied on top, each half of the time. Every
    draw happens whether or not it is used, so the stream stays aligned.

    Args:
        hu: 2D slice in HU.
        low_quality: The ``low_quality`` block of the phantom parameters.
        spacing_mm: Pixel spacing in millimetres.
        rng: Random generator for the draws and the Poisson noise.

    Returns:
        float32 slice in HU, clipped to the 12-bit stored range [-1024, 3071].
    """
    dose_fraction = rng.uniform(*low_quality["dose_fraction"])
    fault_draw = rng.random()
    use_exposure_fault = rng.random() < 0.5
    shift_hu = rng.uniform(*low_quality["exposure_shift_hu"])
    contrast_factor = rng.uniform(*low_quality["contrast_factor"])

    twin = low_dose_fault(
        hu,
        dose_fraction,
        rng,
        spacing_mm=spacing_mm,
        incident_photons=float(low_quality["incident_photons"]),
        n_angles=int(low_quality["n_angles"]),
    )
    if fault_draw < low_quality["fault_probability"]:
        if use_exposure_fault:
            twin = exposure_fault(twin, gain=1.0, offset=shift_hu, domain="hu")
        else:
            twin = contrast_fault(twin, contrast_factor, domain="hu")
    return np.clip(twin, *STORED_HU_RANGE).astype(np.float32)
