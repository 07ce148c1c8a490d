"""Degradation model: physically motivated faults that turn clean slices into paired training data.

Every fault has a severity parameter, and the random ones take a
``numpy.random.Generator``, so a seed reproduces a degradation exactly:

* **low dose** (``low_dose_fault``): the HU slice is acquired again at a
  fraction of the dose, with Poisson photon noise in the projection domain and
  filtered back-projection (``simulate_low_dose``). Severity: ``dose_fraction``
  (lower is noisier). Only slices with HU can get it; on slices without HU
  ``gaussian_noise_fault`` adds intensity noise of standard deviation
  ``sigma`` instead.
* **blur** (``blur_fault``): a Gaussian point-spread function of ``sigma_px``
  pixels, as from a smooth reconstruction kernel or patient motion.
* **poor exposure** (``exposure_fault``): a calibration error,
  ``gain · x + offset``, in [0, 1] intensity or in HU.
* **low contrast** (``contrast_fault``): values pulled toward a centre by
  ``factor`` in (0, 1].
* **haze** (``haze_fault``): the atmospheric scattering model of dehazing,
  ``I = J · t + A · (1 − t)``, with transmission ``t`` (lower is thicker) and
  airlight ``A``. In CT it models scatter and veiling glare, which lift and
  flatten the whole slice.

``degrade_slice`` draws a random set of faults per slice from a parameter
block (probabilities and severity ranges) and applies them in a fixed order:
low dose (in HU), lung window, intensity noise, blur, contrast, exposure, haze.
The phantom's poor-quality twin (``lungct_kedro.phantom.twin``) uses the same
low-dose, exposure and contrast functions in HU.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from lungct_kedro.imaging.hu import apply_window
from lungct_kedro.imaging.lowdose import apply_contrast_fault, apply_exposure_fault, simulate_low_dose

logger = logging.getLogger(__name__)

#: Faults in the order ``apply_fault_plan`` applies them.
FAULT_NAMES = ("low_dose", "blur", "contrast", "exposure", "haze")
DOMAINS = ("intensity", "hu")
#: Lung window (level, width) in HU used when the caller gives none.
DEFAULT_WINDOW_HU = (-600.0, 1500.0)


def low_dose_fault(
    hu: np.ndarray,
    dose_fraction: float,
    rng: np.random.Generator,
    *,
    spacing_mm: float,
    incident_photons: float = 1e5,
    n_angles: int = 180,
) -> np.ndarray:
    """Acquire an HU slice again at a reduced dose.

    Forward projection, Poisson photon noise at ``incident_photons ·
    dose_fraction`` photons per detector bin, and filtered back-projection,
    as in ``lungct_kedro.imaging.lowdose.simulate_low_dose``. Noise grows
    roughly as ``1 / sqrt(dose_fraction)``.

    Args:
        hu: 2D slice in HU.
        dose_fraction: Dose relative to the reference acquisition, in (0, 1].
        rng: Draws the Poisson counts.
        spacing_mm: Pixel spacing of ``hu`` in millimetres.
        incident_photons: Unattenuated photons per detector bin at full dose.
        n_angles: Projection angles over 180 degrees.

    Returns:
        float32 slice in HU with the shape of ``hu``.

    Raises:
        ValueError: An argument is out of range (see ``simulate_low_dose``).
    """
    return simulate_low_dose(
        hu,
        dose_fraction,
        rng,
        incident_photons=incident_photons,
        n_angles=n_angles,
        pixel_spacing_mm=spacing_mm,
    )


def gaussian_noise_fault(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Add white Gaussian noise of standard deviation ``sigma`` to a [0, 1] slice.

    A stand-in for quantum noise on slices without HU, where the projection
    domain cannot be simulated. The result is clipped to [0, 1].

    Raises:
        ValueError: ``sigma`` is negative or not finite.
    """
    if not (sigma >= 0.0 and math.isfinite(sigma)):
        raise ValueError(f"noise sigma must be a finite number >= 0 in [0, 1] intensity units, got {sigma}")
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0.0, sigma, size=np.shape(image)).astype(np.float32)
    return np.clip(noisy, 0.0, 1.0)


def blur_fault(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Blur a slice with a Gaussian point-spread function.

    Args:
        image: 2D slice, any intensity scale.
        sigma_px: Standard deviation of the Gaussian in pixels, >= 0
            (0 returns a copy).

    Returns:
        float32 slice of the same shape; edges are extended by their nearest
        value.

    Raises:
        ValueError: ``sigma_px`` is negative or not finite.
    """
    if not (sigma_px >= 0.0 and math.isfinite(sigma_px)):
        raise ValueError(f"blur sigma_px must be a finite number of pixels >= 0, got {sigma_px}")
    image = np.asarray(image, dtype=np.float32)
    if sigma_px == 0.0:
        return image.copy()
    return ndimage.gaussian_filter(image, sigma=sigma_px, mode="nearest").astype(np.float32)


def exposure_fault(
    values: np.ndarray, gain: float = 1.0, offset: float = 0.0, *, domain: str = "intensity"
) -> np.ndarray:
    """Apply a calibration error that scales and shifts intensities.

    Args:
        values: Slice in [0, 1] intensity (``domain="intensity"``) or in HU
            (``domain="hu"``).
        gain: Positive scale factor (1 leaves the slice as is). In HU it
            scales attenuation relative to air, so air stays at -1000 HU.
        offset: Shift added to every pixel, in [0, 1] intensity units or HU.
        domain: ``intensity`` or ``hu``.

    Returns:
        float32 array of the same shape: ``clip(gain · x + offset, 0, 1)`` in
        intensity, ``(hu + 1000) · gain − 1000 + offset`` in HU (not clipped).

    Raises:
        ValueError: ``gain`` is not positive, ``offset`` is not finite, or
            ``domain`` is unknown.
    """
    if domain == "hu":
        return apply_exposure_fault(values, shift_hu=offset, gain=gain)
    _check_domain(domain)
    if not (gain > 0.0 and math.isfinite(gain)):
        raise ValueError(f"exposure gain must be a positive finite number, got {gain}")
    if not math.isfinite(offset):
        raise ValueError(f"exposure offset must be a finite number of [0, 1] intensity units, got {offset}")
    return np.clip(gain * np.asarray(values, dtype=np.float32) + np.float32(offset), 0.0, 1.0)


def contrast_fault(
    values: np.ndarray, factor: float, centre: float | None = None, *, domain: str = "intensity"
) -> np.ndarray:
    """Pull values toward ``centre`` by ``factor``, lowering contrast.

    Args:
        values: Slice in [0, 1] intensity or in HU (see ``domain``).
        factor: Contrast scale in (0, 1]; 1 leaves the slice as is.
        centre: Value that stays fixed, in the units of ``values``; defaults
            to the slice mean.
        domain: ``intensity`` (result clipped to [0, 1]) or ``hu``.

    Returns:
        float32 array ``centre + factor · (x − centre)``.

    Raises:
        ValueError: ``factor`` is not in (0, 1], or ``domain`` is unknown.
    """
    if domain == "hu":
        return apply_contrast_fault(values, factor, centre_hu=centre)
    _check_domain(domain)
    if not (0.0 < factor <= 1.0):
        raise ValueError(f"contrast factor must be in (0, 1], got {factor}")
    image = np.asarray(values, dtype=np.float32)
    fixed = float(image.mean()) if centre is None else float(centre)
    return np.clip(fixed + factor * (image - fixed), 0.0, 1.0).astype(np.float32)


def haze_fault(image: np.ndarray, transmission: float | np.ndarray, airlight: float) -> np.ndarray:
    """Veil a [0, 1] slice with haze, ``I = J · t + A · (1 − t)``.

    This is the atmospheric scattering model that dehazing methods invert:
    a share ``1 − t`` of every pixel is replaced by the airlight ``A``.

    Args:
        image: Clean slice ``J`` in [0, 1].
        transmission: ``t`` in (0, 1], a scalar or a map of the slice's shape;
            1 is no haze and lower values are thicker haze.
        airlight: ``A`` in [0, 1], the intensity the haze tends to.

    Returns:
        float32 hazy slice in [0, 1].

    Raises:
        ValueError: ``transmission`` or ``airlight`` is out of range, or a
            transmission map has another shape than ``image``.
    """
    image = np.asarray(image, dtype=np.float32)
    t = np.asarray(transmission, dtype=np.float32)
    if t.ndim and t.shape != image.shape:
        raise ValueError(f"transmission map has shape {t.shape}; expected a scalar or the slice shape {image.shape}")
    if not (np.all(t > 0.0) and np.all(t <= 1.0)):
        raise ValueError(f"transmission must be in (0, 1], got values in [{float(t.min())}, {float(t.max())}]")
    if not (0.0 <= airlight <= 1.0):
        raise ValueError(f"airlight must be in [0, 1] intensity units, got {airlight}")
    return np.clip(image * t + np.float32(airlight) * (1.0 - t), 0.0, 1.0)


def _check_domain(domain: str) -> None:
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")


def _draw_range(rng: np.random.Generator, bounds: Sequence[float], name: str) -> float:
    low, high = (float(value) for value in bounds)
    if low > high:
        raise ValueError(f"{name} range [{low}, {high}] has its lower bound above its upper bound; swap them")
    return float(rng.uniform(low, high))


def validate_degradation_params(params: Mapping[str, Any]) -> None:
    """Check a degradation parameter block before any slice is degraded.

    Raises:
        ValueError: A fault is missing, a probability is outside [0, 1], or a
            severity range is not a ``[low, high]`` pair with low <= high.
    """
    missing = [name for name in FAULT_NAMES if name not in params]
    if missing:
        raise ValueError(f"degradation parameters lack the faults {missing}; give each a probability and ranges")
    ranges = {
        "low_dose": ["dose_fraction", "fallback_noise_sigma"],
        "blur": ["sigma_px"],
        "contrast": ["factor"],
        "exposure": ["gain", "offset"],
        "haze": ["transmission", "airlight"],
    }
    for name, keys in ranges.items():
        block = params[name]
        probability = float(block["probability"])
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"degradation.{name}.probability must be in [0, 1], got {probability}")
        for key in keys:
            bounds = block.get(key)
            if bounds is None and key == "fallback_noise_sigma":
                continue
            if bounds is None or len(bounds) != 2 or float(bounds[0]) > float(bounds[1]):
                raise ValueError(f"degradation.{name}.{key} must be a [low, high] range with low <= high, got {bounds}")
    if not 0 <= int(params.get("min_faults", 1)) <= len(FAULT_NAMES):
        raise ValueError(f"degradation.min_faults must be in [0, {len(FAULT_NAMES)}], got {params.get('min_faults')}")


def draw_fault_plan(rng: np.random.Generator, params: Mapping[str, Any], has_hu: bool) -> dict[str, dict[str, float]]:
    """Draw which faults a slice gets and their severities.

    Each fault is drawn with its ``probability``. Without HU the low-dose
    fault becomes Gaussian intensity noise (``fallback_noise_sigma``), or is
    dropped when that range is null. If fewer than ``min_faults`` (0 or 1)
    faults were drawn, one available fault is picked uniformly.

    Args:
        rng: Random generator for the draws.
        params: Degradation parameters: per fault a ``probability`` and
            ``[low, high]`` ranges (``low_dose``: ``dose_fraction``,
            ``incident_photons``, ``n_angles``, ``fallback_noise_sigma``;
            ``blur``: ``sigma_px``; ``contrast``: ``factor``; ``exposure``:
            ``gain``, ``offset``; ``haze``: ``transmission``, ``airlight``),
            and ``min_faults``.
        has_hu: Whether the slice has HU values, which low dose needs.

    Returns:
        Fault name → its drawn severities, in application order. A
        low-dose entry contains ``dose_fraction``, and its stand-in on slices
        without HU contains ``noise_sigma``.
    """
    noise_range = params["low_dose"].get("fallback_noise_sigma")
    available = [name for name in FAULT_NAMES if name != "low_dose" or has_hu or noise_range is not None]
    chosen = [name for name in available if rng.random() < float(params[name]["probability"])]
    if len(chosen) < min(int(params.get("min_faults", 1)), 1) and available:
        chosen = [available[int(rng.integers(len(available)))]]

    plan: dict[str, dict[str, float]] = {}
    for name in FAULT_NAMES:
        if name not in chosen:
            continue
        block = params[name]
        if name == "low_dose" and has_hu:
            plan[name] = {"dose_fraction": _draw_range(rng, block["dose_fraction"], "low_dose.dose_fraction")}
        elif name == "low_dose":
            plan[name] = {"noise_sigma": _draw_range(rng, noise_range, "low_dose.fallback_noise_sigma")}
        elif name == "blur":
            plan[name] = {"sigma_px": _draw_range(rng, block["sigma_px"], "blur.sigma_px")}
        elif name == "contrast":
            plan[name] = {"factor": _draw_range(rng, block["factor"], "contrast.factor")}
        elif name == "exposure":
            plan[name] = {
                "gain": _draw_range(rng, block["gain"], "exposure.gain"),
                "offset": _draw_range(rng, block["offset"], "exposure.offset"),
            }
        else:
            plan[name] = {
                "transmission": _draw_range(rng, block["transmission"], "haze.transmission"),
                "airlight": _draw_range(rng, block["airlight"], "haze.airlight"),
            }
    return plan


def apply_fault_plan(
    image: np.ndarray,
    plan: Mapping[str, Mapping[str, float]],
    rng: np.random.Generator,
    params: Mapping[str, Any],
    hu: np.ndarray | None = None,
    spacing_mm: float | None = None,
    window: tuple[float, float] = DEFAULT_WINDOW_HU,
    low_dose_hu: np.ndarray | None = None,
) -> np.ndarray:
    """Apply the faults of ``plan`` to one slice.

    Args:
        image: Clean 2D slice in [0, 1] (lung-windowed).
        plan: Output of ``draw_fault_plan``.
        rng: Draws the photon or intensity noise.
        params: The degradation parameters (``low_dose.incident_photons``
            and ``low_dose.n_angles`` are read here).
        hu: The slice in HU, needed by a ``dose_fraction`` low-dose entry.
        spacing_mm: Pixel spacing of ``hu`` in millimetres.
        window: Lung window (level, width) in HU that made ``image``.
        low_dose_hu: A low-dose reconstruction of ``hu`` made earlier, used
            instead of simulating one. The projection round trip costs about
            0.1 s for a 128 px slice on one CPU core.

    Returns:
        float32 degraded slice in [0, 1].

    Raises:
        ValueError: The plan requests low dose in the projection domain but
            ``hu`` or ``spacing_mm`` is missing.
    """
    degraded = np.asarray(image, dtype=np.float32)
    low_dose = plan.get("low_dose")
    if low_dose is not None and "dose_fraction" in low_dose:
        if low_dose_hu is None:
            if hu is None or spacing_mm is None or not math.isfinite(spacing_mm):
                raise ValueError(
                    "the low-dose fault needs the slice in HU and its pixel spacing in mm; "
                    "pass hu= and spacing_mm=, or draw the plan with has_hu=False"
                )
            low_dose_hu = low_dose_fault(
                hu,
                low_dose["dose_fraction"],
                rng,
                spacing_mm=spacing_mm,
                incident_photons=float(params["low_dose"].get("incident_photons", 1e5)),
                n_angles=int(params["low_dose"].get("n_angles", 180)),
            )
        degraded = apply_window(low_dose_hu, *window)
    elif low_dose is not None:
        degraded = gaussian_noise_fault(degraded, low_dose["noise_sigma"], rng)
    if "blur" in plan:
        degraded = blur_fault(degraded, plan["blur"]["sigma_px"])
    if "contrast" in plan:
        degraded = contrast_fault(degraded, plan["contrast"]["factor"])
    if "exposure" in plan:
        degraded = exposure_fault(degraded, plan["exposure"]["gain"], plan["exposure"]["offset"])
    if "haze" in plan:
        degraded = haze_fault(degraded, plan["haze"]["transmission"], plan["haze"]["airlight"])
    return np.clip(degraded, 0.0, 1.0).astype(np.float32)


def degrade_slice(
    image: np.ndarray,
    rng: np.random.Generator,
    params: Mapping[str, Any],
    hu: np.ndarray | None = None,
    spacing_mm: float | None = None,
    window: tuple[float, float] = DEFAULT_WINDOW_HU,
) -> tuple[np.ndarray, dict[str, dict[str, float]]]:
    """Degrade one clean slice with faults drawn at random from ``params``.

    Low dose is possible only when ``hu`` and a finite ``spacing_mm`` are
    given; other slices get Gaussian intensity noise in its place (see
    ``draw_fault_plan``).

    Args:
        image: Clean 2D slice in [0, 1] (lung-windowed).
        rng: Random generator; the same seed gives the same output.
        params: Degradation parameters (see ``draw_fault_plan``).
        hu: The slice in HU, or None.
        spacing_mm: Pixel spacing of ``hu`` in millimetres.
        window: Lung window (level, width) in HU that made ``image``.

    Returns:
        The float32 degraded slice in [0, 1], and the record of what was
        applied: fault name → severities, in application order.

    Raises:
        ValueError: ``image`` is not 2D, or a parameter is out of range.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"degrade_slice expects one 2D slice, got shape {image.shape}")
    has_hu = hu is not None and spacing_mm is not None and math.isfinite(spacing_mm)
    plan = draw_fault_plan(rng, params, has_hu)
    degraded = apply_fault_plan(image, plan, rng, params, hu, spacing_mm, window)
    return degraded, plan


def describe_fault_plan(plan: Mapping[str, Mapping[str, float]]) -> str:
    """Write a fault plan as one line, for example ``low_dose(dose_fraction=0.12) + haze(...)``."""
    parts = []
    for name, severities in plan.items():
        label = "noise" if name == "low_dose" and "noise_sigma" in severities else name
        values = ", ".join(f"{key}={value:.3g}" for key, value in severities.items())
        parts.append(f"{label}({values})")
    return " + ".join(parts) if parts else "none"
