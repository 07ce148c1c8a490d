"""Reader for NIfTI CT volumes (``.nii`` or ``.nii.gz``) with optional mask volumes.

Each volume is reoriented to RAS+ with ``nibabel.as_closest_canonical`` and
cut into axial slices, most superior first. Each slice is given in
radiological display: rows run anterior to posterior and columns from the
patient's right to left, so the patient's right is on the image's left.
One volume (and its mask) is held in memory at a time.
"""

from __future__ import annotations

import logging
import math
import re
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from lungct_kedro.readers.base import InvalidSourceError, RawSlice, SkippedFile

logger = logging.getLogger(__name__)

AIR_HU = -1024.0
DEFAULT_MASK_VALUES = (0, 1, 2)
MISSING_MASK_MODES = ("error", "none")
OPTION_NAMES = ("masks", "mask_suffix", "mask_values", "missing_mask", "is_hu")
NIFTI_SUFFIXES = (".nii.gz", ".nii")

# A CT volume in HU has air near -1000 and soft tissue or bone above 100.
_HU_CHECK_MAX_P1 = -500.0
_HU_CHECK_MIN_P99 = 100.0
# The HU check looks at about this many voxels, taken on a regular grid.
_HU_CHECK_SAMPLE_SIZE = 1_000_000
# InvalidSourceError subclasses ValueError, so handlers re-raise it before catching these.
_LOAD_ERRORS = (ImageFileError, OSError, EOFError, ValueError, zlib.error, MemoryError)
_SKIP_FIX = "Re-export or remove the file, or set skip_invalid: true on the source to leave it out"


@dataclass(frozen=True)
class NiftiOptions:
    """Validated options of a ``nifti`` source.

    Attributes:
        masks: A mask file (for a single-volume source), or a folder of mask
            volumes named like their images. Relative paths start at the
            source folder (the file's folder when the source is one file).
        mask_suffix: Alternative to ``masks``: the mask of ``case.nii.gz`` is
            ``case<suffix>.nii.gz`` beside it, and such files are not read as
            images.
        mask_values: Class indices a mask may contain.
        missing_mask: What an image without its mask file gets: ``error`` or
            ``none`` (no mask).
        is_hu: Whether voxel values are Hounsfield units. When false, each
            volume is scaled to [0, 1] by its own minimum and maximum.
    """

    masks: str | None = None
    mask_suffix: str | None = None
    mask_values: tuple[int, ...] = DEFAULT_MASK_VALUES
    missing_mask: str = "error"
    is_hu: bool = True


@dataclass(frozen=True)
class _Volume:
    data: np.ndarray
    affine: np.ndarray
    zooms: tuple[float, float, float]
    stored_shape: tuple[int, ...]


def parse_nifti_options(options: Mapping[str, Any]) -> NiftiOptions:
    """Validate the ``options`` mapping of a ``nifti`` source.

    Args:
        options: Option names and values from the source declaration.

    Returns:
        The options with defaults filled in.

    Raises:
        ValueError: If a key is unknown or a value is invalid. The message
            names the key and the allowed keys or values.
    """
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise ValueError(f"unknown nifti option(s) {unknown}; allowed options: {list(OPTION_NAMES)}")

    masks = options.get("masks")
    if masks is not None and (not isinstance(masks, (str, Path)) or not str(masks).strip()):
        raise ValueError(f"option 'masks' is {masks!r}; expected a file or folder path, or null")
    mask_suffix = options.get("mask_suffix")
    if mask_suffix is not None and (not isinstance(mask_suffix, str) or not mask_suffix or "/" in mask_suffix):
        raise ValueError(f"option 'mask_suffix' is {mask_suffix!r}; expected a file-name suffix such as '_seg'")
    if masks is not None and mask_suffix is not None:
        raise ValueError("options 'masks' and 'mask_suffix' are both set; keep only one of them")

    mask_values = options.get("mask_values", DEFAULT_MASK_VALUES)
    if isinstance(mask_values, (str, bytes)) or not isinstance(mask_values, Sequence) or not mask_values:
        raise ValueError(f"option 'mask_values' is {mask_values!r}; expected a non-empty list of integers 0-255")
    for value in mask_values:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= 255:
            raise ValueError(f"option 'mask_values' contains {value!r}; every value must be an integer 0-255")

    missing_mask = options.get("missing_mask", "error")
    if missing_mask not in MISSING_MASK_MODES:
        raise ValueError(f"option 'missing_mask' is {missing_mask!r}; allowed values: {list(MISSING_MASK_MODES)}")
    is_hu = options.get("is_hu", True)
    if not isinstance(is_hu, bool):
        raise ValueError(f"option 'is_hu' is {is_hu!r}; allowed values: true or false")

    return NiftiOptions(
        masks=str(masks) if masks is not None else None,
        mask_suffix=mask_suffix,
        mask_values=tuple(sorted({int(value) for value in mask_values})),
        missing_mask=missing_mask,
        is_hu=is_hu,
    )


def read_nifti(path: Path, options: Mapping[str, Any], skipped: list[SkippedFile] | None = None) -> Iterator[RawSlice]:
    """Read NIfTI volumes as axial slices in radiological display.

    Files are listed when the function is called; volumes are loaded lazily,
    one at a time, as the iterator is consumed. Header scaling
    (scl_slope, scl_inter) is applied once, by nibabel. In HU mode, values
    below -1024 (such as padding outside the field of view) become -1024.

    Args:
        path: One ``.nii``/``.nii.gz`` file, or a folder of them (not searched
            recursively). ``file_key`` is the volume's path relative to the
            folder, shared by all slices of that volume.
        options: See ``NiftiOptions`` for keys and defaults.
        skipped: None makes the first invalid volume raise. A list collects
            invalid volumes as ``SkippedFile`` and reading goes on.

    Returns:
        Iterator of slices, volume by volume, ``slice_index`` 0 = most
        superior, ``volume_key`` = the file name without its suffix.
        ``spacing_mm`` is (row, column) and ``slice_thickness_mm`` the
        voxel size along the slice axis, from the header zooms in mm.

    Raises:
        ValueError: If an option is unknown or invalid.
        InvalidSourceError: If the path or a configured mask path is missing
            or contains no NIfTI file (even when ``skipped`` is a list), or if a
            volume or mask is invalid and ``skipped`` is None.
    """
    settings = parse_nifti_options(options)
    source = Path(path)
    if not source.exists():
        raise InvalidSourceError(source, "NIfTI source path not found", "Fix 'path' in the source declaration")

    if source.is_file():
        if _nifti_stem(source) is None:
            raise InvalidSourceError(
                source,
                "file is not a NIfTI volume (.nii or .nii.gz)",
                "Point 'path' at a NIfTI file or a folder of them",
            )
        root = source.parent
        images = [source]
    else:
        root = source
        images = _list_volumes(source, settings.mask_suffix)
        if not images:
            raise InvalidSourceError(
                source, "no .nii or .nii.gz files found", "Point 'path' at a folder of NIfTI volumes or at one file"
            )

    mask_location = _resolve_mask_location(settings, root, len(images))
    return _generate_slices(images, root, mask_location, settings, skipped)


def _nifti_stem(path: Path) -> str | None:
    lower = path.name.lower()
    for suffix in NIFTI_SUFFIXES:
        if lower.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def _natural_key(text: str) -> list[Any]:
    """Split digits from text so that ``case_2`` sorts before ``case_10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def _list_volumes(folder: Path, mask_suffix: str | None) -> list[Path]:
    volumes = []
    for item in folder.iterdir():
        stem = _nifti_stem(item)
        if stem is None or not item.is_file():
            continue
        if mask_suffix is not None and stem.endswith(mask_suffix):
            continue
        volumes.append(item)
    return sorted(volumes, key=lambda item: _natural_key(item.name))


def _resolve_mask_location(settings: NiftiOptions, root: Path, image_count: int) -> Path | None:
    if settings.masks is None:
        return None
    location = Path(settings.masks).expanduser()
    if not location.is_absolute():
        location = root / location
    if not location.exists():
        raise InvalidSourceError(location, "mask file or folder not found", "Fix the source's 'masks' option")
    if location.is_file() and image_count > 1:
        raise InvalidSourceError(
            location,
            f"option 'masks' names one file but the source has {image_count} volumes",
            "Set 'masks' to a folder of masks named like their images, or use 'mask_suffix'",
        )
    return location


def _mask_path_for(image_path: Path, mask_location: Path | None, settings: NiftiOptions) -> Path | None:
    """Return the expected mask path of an image, whether or not it exists; None when masks are off."""
    if mask_location is not None:
        return mask_location if mask_location.is_file() else mask_location / image_path.name
    if settings.mask_suffix is not None:
        stem = _nifti_stem(image_path)
        same_suffix = image_path.with_name(f"{stem}{settings.mask_suffix}{image_path.name[len(stem):]}")
        if same_suffix.exists():
            return same_suffix
        for suffix in NIFTI_SUFFIXES:
            candidate = image_path.with_name(f"{stem}{settings.mask_suffix}{suffix}")
            if candidate.exists():
                return candidate
        return same_suffix
    return None


def _generate_slices(
    images: Sequence[Path],
    root: Path,
    mask_location: Path | None,
    settings: NiftiOptions,
    skipped: list[SkippedFile] | None,
) -> Iterator[RawSlice]:
    for image_path in images:
        try:
            volume = _load_canonical(image_path)
            pixels = _to_output_values(volume.data, image_path, settings.is_hu)
            mask = _load_mask_for(image_path, volume, mask_location, settings)
        except InvalidSourceError as error:
            _skip_or_raise(error, skipped)
            continue

        file_key = image_path.relative_to(root).as_posix()
        volume_key = _nifti_stem(image_path)
        row_spacing, column_spacing, thickness = volume.zooms
        depth = pixels.shape[2]
        for slice_index, axial in enumerate(range(depth - 1, -1, -1)):
            yield RawSlice(
                pixels=_display_slice(pixels, axial).astype(np.float32),
                is_hu=settings.is_hu,
                file_key=file_key,
                mask=_display_slice(mask, axial).astype(np.uint8) if mask is not None else None,
                volume_key=volume_key,
                slice_index=slice_index,
                spacing_mm=(row_spacing, column_spacing),
                slice_thickness_mm=thickness,
            )
        del pixels, mask, volume


def _display_slice(volume: np.ndarray, axial: int) -> np.ndarray:
    """Cut axial slice ``axial`` from a RAS+ array in radiological display.

    In RAS+ the first index grows toward the patient's right and the second
    toward anterior. Flipping both and transposing puts the most anterior
    voxel in row 0 and the patient's right-most voxel in column 0.
    """
    return np.ascontiguousarray(volume[::-1, ::-1, axial].T)


def _load_canonical(path: Path) -> _Volume:
    """Load a volume reoriented to RAS+, with header scaling applied once by nibabel."""
    try:
        image = nib.load(path)
        stored_shape = tuple(int(size) for size in image.shape)
        if len(stored_shape) == 4 and stored_shape[3] == 1:
            image = image.slicer[..., 0]
        elif len(stored_shape) != 3:
            raise InvalidSourceError(
                path, f"volume has shape {stored_shape}, but a 3D volume is expected", "Split it into 3D volumes"
            )
        canonical = nib.as_closest_canonical(image)
        # Reading dataobj applies scl_slope and scl_inter; get_fdata() would too,
        # but as float64. Neither may be followed by a second scaling.
        data = np.asanyarray(canonical.dataobj)
    except InvalidSourceError:
        raise
    except _LOAD_ERRORS as error:
        raise InvalidSourceError(path, f"NIfTI volume cannot be read ({error})", _SKIP_FIX) from error

    # The header stores pixdim as float32, so rounding to 1e-6 mm drops float32 noise (0.8 -> 0.800000011920929).
    zooms = tuple(round(float(size), 6) for size in canonical.header.get_zooms()[:3])
    # Canonical axes are (x, y, z), and a display row steps along y.
    return _Volume(
        data=data,
        affine=canonical.affine,
        zooms=(zooms[1], zooms[0], zooms[2]),
        stored_shape=stored_shape,
    )


def _to_output_values(data: np.ndarray, path: Path, is_hu: bool) -> np.ndarray:
    """Return HU clamped at -1024 (warning when the values do not look like HU), or [0, 1] intensities."""
    sample = _regular_sample(data).astype(np.float64)
    finite = sample[np.isfinite(sample)]
    if finite.size < sample.size:
        replacement = "-1024 HU" if is_hu else "the volume minimum"
        logger.warning("Volume %s contains NaN or infinite values; they become %s", path, replacement)
    if finite.size == 0:
        raise InvalidSourceError(path, "volume contains no finite values", _SKIP_FIX)

    if not is_hu:
        low = float(np.nanmin(np.where(np.isfinite(data), data, np.inf)))
        high = float(np.nanmax(np.where(np.isfinite(data), data, -np.inf)))
        scaled = np.nan_to_num(data.astype(np.float32), nan=low, posinf=high, neginf=low)
        if high > low:
            scaled = (scaled - np.float32(low)) / np.float32(high - low)
        else:
            scaled = np.zeros_like(scaled)
        return scaled

    first, last = np.percentile(finite, [1, 99])
    in_unit_range = finite.min() >= 0.0 and finite.max() <= 1.0
    if first > _HU_CHECK_MAX_P1 or last < _HU_CHECK_MIN_P99 or in_unit_range:
        logger.warning(
            "Volume %s does not look like Hounsfield units (1st percentile %.1f, 99th percentile %.1f); "
            "it is read as HU anyway. Set is_hu: false on the source if it contains other intensities",
            path,
            first,
            last,
        )
    hu = np.nan_to_num(data.astype(np.float32), nan=AIR_HU, posinf=AIR_HU, neginf=AIR_HU)
    np.maximum(hu, np.float32(AIR_HU), out=hu)
    return hu


def _regular_sample(data: np.ndarray) -> np.ndarray:
    step = max(1, math.ceil((data.size / _HU_CHECK_SAMPLE_SIZE) ** (1.0 / 3.0)))
    return np.asarray(data[::step, ::step, ::step]).reshape(-1)


def _load_mask_for(
    image_path: Path, volume: _Volume, mask_location: Path | None, settings: NiftiOptions
) -> np.ndarray | None:
    mask_path = _mask_path_for(image_path, mask_location, settings)
    if mask_path is None:
        return None
    if not mask_path.is_file():
        if settings.missing_mask == "none":
            return None
        raise InvalidSourceError(
            image_path,
            f"mask volume {mask_path} not found",
            "Add the mask, fix 'masks' or 'mask_suffix', or set missing_mask: none",
        )

    mask_volume = _load_canonical(mask_path)
    if mask_volume.data.shape != volume.data.shape:
        raise InvalidSourceError(
            image_path,
            f"mask {mask_path} has shape {mask_volume.stored_shape} but image {image_path.name} has shape "
            f"{volume.stored_shape}",
            "Use the mask that was drawn on this volume, resampled to the same grid",
        )
    if not np.allclose(mask_volume.affine, volume.affine, atol=1e-2):
        logger.warning(
            "Mask %s and image %s have different affines; they are paired voxel by voxel", mask_path, image_path
        )

    values = mask_volume.data
    if not np.issubdtype(values.dtype, np.integer):
        if not np.all(np.isfinite(values)) or not np.array_equal(values, np.round(values)):
            raise InvalidSourceError(
                mask_path, "mask contains non-integer values", "Save the mask with integer class indices"
            )
    found = np.unique(values)
    outside = sorted(int(value) for value in found if int(value) not in settings.mask_values)
    if outside:
        raise InvalidSourceError(
            mask_path,
            f"mask values {outside} are outside mask_values {list(settings.mask_values)}",
            "Fix the mask, or change the source's 'mask_values' option if these classes are expected",
        )
    return values.astype(np.uint8)


def _skip_or_raise(error: InvalidSourceError, skipped: list[SkippedFile] | None) -> None:
    if skipped is None:
        raise error
    skipped.append(SkippedFile(path=error.path, reason=error.problem))
    logger.warning("Skipping %s: %s", error.path, error.problem)
