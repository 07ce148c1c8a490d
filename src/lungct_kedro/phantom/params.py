"""Parameters of the phantom cohort: defaults and validation."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

DEFAULT: dict[str, Any] = {
    "n_patients": 12,
    "slices_per_patient": 8,
    "image_size": 128,
    "field_of_view_mm": 360.0,
    "slice_thickness_mm": 5.0,
    "healthy_fraction": 0.25,
    "severity_thresholds": [0.08, 0.2],
    "low_quality": {
        "dose_fraction": [0.05, 0.3],
        "incident_photons": 1.0e5,
        "n_angles": 180,
        "exposure_shift_hu": [-120.0, 120.0],
        "contrast_factor": [0.5, 1.0],
        "fault_probability": 0.5,
    },
}
"""Phantom parameters for a small cohort: 12 patients of 8 slices at 128 px."""

MIN_IMAGE_SIZE = 32


def _require_number(params: Mapping[str, Any], key: str, low: float, high: float, *, integer: bool = False) -> None:
    """Raise ValueError unless ``params[key]`` is a number in [low, high]."""
    value = params[key]
    kind = "an integer" if integer else "a number"
    is_number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not is_number or (integer and int(value) != value) or not (low <= value <= high):
        raise ValueError(f"phantom parameter {key} must be {kind} in [{low}, {high}], got {value!r}")


def _require_range(params: Mapping[str, Any], key: str, low: float, high: float, *, open_low: bool = False) -> None:
    """Raise ValueError unless ``params[key]`` is a [min, max] pair inside [low, high]."""
    value = params[key]
    bound = f"({low}, {high}]" if open_low else f"[{low}, {high}]"
    try:
        first, second = (float(item) for item in value)
    except (TypeError, ValueError):
        raise ValueError(f"phantom parameter {key} must be a [min, max] pair within {bound}, got {value!r}") from None
    below = first <= low if open_low else first < low
    if below or second > high or first > second or not (math.isfinite(first) and math.isfinite(second)):
        raise ValueError(
            f"phantom parameter {key} must be a [min, max] pair with min <= max within {bound}, got {value!r}"
        )


def validate_phantom_params(params: Mapping[str, Any]) -> None:
    """Check phantom parameters, raising ValueError that names the first bad key.

    Args:
        params: Mapping with every key of ``DEFAULT``.

    Raises:
        ValueError: If a key is missing, or a value has the wrong type or
            lies outside its valid range.
    """
    missing = sorted(set(DEFAULT) - set(params))
    if missing:
        raise ValueError(f"phantom parameters are missing keys {missing}. Copy them from phantom.DEFAULT")
    _require_number(params, "n_patients", 1, 100_000, integer=True)
    _require_number(params, "slices_per_patient", 1, 10_000, integer=True)
    _require_number(params, "image_size", MIN_IMAGE_SIZE, 4096, integer=True)
    _require_number(params, "field_of_view_mm", 100.0, 1000.0)
    _require_number(params, "slice_thickness_mm", 0.1, 50.0)
    _require_number(params, "healthy_fraction", 0.0, 1.0)
    _require_range(params, "severity_thresholds", 0.0, 1.0, open_low=True)
    thresholds = params["severity_thresholds"]
    if len(thresholds) != 2 or not thresholds[0] < thresholds[1] < 1.0:
        raise ValueError(
            f"phantom parameter severity_thresholds must be two increasing burdens in (0, 1), got {thresholds!r}"
        )

    low_quality = params["low_quality"]
    if not isinstance(low_quality, Mapping):
        raise ValueError(f"phantom parameter low_quality must be a mapping, got {type(low_quality).__name__}")
    missing = sorted(set(DEFAULT["low_quality"]) - set(low_quality))
    if missing:
        raise ValueError(f"phantom parameter low_quality is missing keys {missing}. Copy them from phantom.DEFAULT")
    _require_range(low_quality, "dose_fraction", 0.0, 1.0, open_low=True)
    _require_number(low_quality, "incident_photons", 1.0, 1e12)
    _require_number(low_quality, "n_angles", 2, 10_000, integer=True)
    _require_range(low_quality, "exposure_shift_hu", -1000.0, 1000.0)
    _require_range(low_quality, "contrast_factor", 0.0, 1.0, open_low=True)
    _require_number(low_quality, "fault_probability", 0.0, 1.0)


def validate_seed(seed: int) -> None:
    """Raise ValueError unless ``seed`` is a non-negative integer."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"phantom seed must be a non-negative integer, got {seed!r}")
