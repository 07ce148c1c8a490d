"""Classical enhancement of windowed CT slices, as a configurable chain of steps.

The curation pipeline uses it to make enhanced references for low-quality
slices, and the dehazing benchmark uses the same chain as a baseline.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from skimage import exposure, restoration

STEP_NAMES = ("nl_means", "bilateral", "clahe", "gamma", "exposure")


def _nl_means(image: np.ndarray, strength: float = 0.8, patch_size: int = 5, patch_distance: int = 6) -> np.ndarray:
    sigma = float(np.mean(restoration.estimate_sigma(image)))
    return restoration.denoise_nl_means(
        image, h=strength * sigma, sigma=sigma, patch_size=patch_size, patch_distance=patch_distance, fast_mode=True
    )


def _bilateral(image: np.ndarray, sigma_color: float = 0.05, sigma_spatial: float = 1.5) -> np.ndarray:
    return restoration.denoise_bilateral(image, sigma_color=sigma_color, sigma_spatial=sigma_spatial)


def _clahe(image: np.ndarray, clip_limit: float = 0.01, kernel_size: int | None = None) -> np.ndarray:
    return exposure.equalize_adapthist(image, clip_limit=clip_limit, kernel_size=kernel_size)


def _gamma(image: np.ndarray, gamma: float = 1.0) -> np.ndarray:
    return np.power(image, gamma)


def _exposure(image: np.ndarray, low_percentile: float = 0.5, high_percentile: float = 99.5) -> np.ndarray:
    """Stretch the given percentiles to 0 and 1, which undoes a global exposure or contrast fault."""
    low, high = np.percentile(image, [low_percentile, high_percentile])
    if high - low < 1e-6:
        return image
    return (image - low) / (high - low)


_STEPS: dict[str, Callable[..., np.ndarray]] = {
    "nl_means": _nl_means,
    "bilateral": _bilateral,
    "clahe": _clahe,
    "gamma": _gamma,
    "exposure": _exposure,
}


def enhance_image(image: np.ndarray, steps: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Apply a chain of classical enhancement steps to one slice.

    Args:
        image: 2D slice with intensities in [0, 1].
        steps: Ordered steps, each ``{"name": ..., **arguments}``:
            ``nl_means`` (``strength`` × the estimated noise sigma, ``patch_size``,
            ``patch_distance``), ``bilateral`` (``sigma_color``,
            ``sigma_spatial`` in px), ``clahe`` (``clip_limit``,
            ``kernel_size`` in px), ``gamma`` (``gamma``), ``exposure``
            (``low_percentile``, ``high_percentile`` stretched to 0 and 1).

    Returns:
        float32 slice in [0, 1].

    Raises:
        ValueError: A step name is unknown, or the image is not 2D.
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"enhance_image expects a 2D slice, got shape {image.shape}")
    result = np.clip(image, 0.0, 1.0)
    for step in steps:
        arguments = dict(step)
        name = arguments.pop("name", None)
        if name not in _STEPS:
            raise ValueError(f"unknown enhancement step {name!r}; use one of {list(STEP_NAMES)}")
        result = np.clip(_STEPS[name](result, **arguments), 0.0, 1.0)
    return result.astype(np.float32)
