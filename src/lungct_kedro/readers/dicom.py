"""Reader for DICOM CT series.

The source folder is searched recursively for DICOM files, with or without a
``.dcm`` suffix. Files are grouped into series by SeriesInstanceUID (by folder
when the UID is missing) and each series is ordered along its slice normal,
most superior slice first. Headers of all files are read first, then pixels
one file at a time, so only one slice is decoded at a time.

Only the identifiers that ``RawSlice`` needs (PatientID and
SeriesInstanceUID) are kept, in memory. No names, dates or other tags are
copied, and logs and error messages name files, never identifiers.
"""

from __future__ import annotations

import logging
import re
import struct
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.uid import UID, MediaStorageDirectoryStorage

from lungct_kedro.readers.base import InvalidSourceError, RawSlice, SkippedFile

logger = logging.getLogger(__name__)

AIR_HU = -1024.0
MONOCHROME1_MODES = ("as_stored", "invert")
OPTION_NAMES = ("allow_non_ct", "min_slices", "monochrome1")

# A slice normal with |z| at least this large counts as axial, within about 25 degrees.
_AXIAL_NORMAL_MIN_Z = 0.9
# pydicom and its decoder plugins raise a wide range of errors on corrupt files.
# InvalidSourceError subclasses ValueError, so handlers re-raise it before catching these.
_PYDICOM_ERRORS = (
    InvalidDicomError,
    OSError,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    IndexError,
    struct.error,
    NotImplementedError,
    RuntimeError,
)
_SKIP_FIX = "Re-export or remove the file, or set skip_invalid: true on the source to leave it out"
_DECODER_FIX = (
    "Install a decoder with 'pip install pylibjpeg pylibjpeg-libjpeg' (JPEG Lossless and JPEG-LS); "
    "JPEG 2000 also works through Pillow or pylibjpeg-openjpeg. Or convert the files to uncompressed DICOM"
)


@dataclass(frozen=True)
class DicomOptions:
    """Validated options of a ``dicom`` source.

    Attributes:
        allow_non_ct: Read series whose Modality is not CT, as intensities in
            [0, 1] (``is_hu=False``) instead of raising.
        min_slices: Series with fewer slices are left out with a warning.
        monochrome1: How MONOCHROME1 CT slices become HU. ``as_stored``
            rescales the stored values unchanged, as the DICOM standard applies
            Rescale Slope and Intercept before the photometric interpretation.
            ``invert`` first maps each stored value v to min + max - v over
            the stored range, for files exported with inverted pixel values.
    """

    allow_non_ct: bool = False
    min_slices: int = 1
    monochrome1: str = "as_stored"


@dataclass(frozen=True)
class _SliceHeader:
    path: Path
    file_key: str
    series_key: tuple[str, str]
    volume_key: str
    patient_key: str
    modality: str | None
    photometric: str | None
    position: tuple[float, ...] | None
    orientation: tuple[float, ...] | None
    slice_location: float | None
    instance_number: int | None


class _MissingDecoderError(InvalidSourceError):
    """No installed plugin decodes the transfer syntax. Raised even with ``skipped``."""


def parse_dicom_options(options: Mapping[str, Any]) -> DicomOptions:
    """Validate the ``options`` mapping of a ``dicom`` source.

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
        raise ValueError(f"unknown dicom option(s) {unknown}; allowed options: {list(OPTION_NAMES)}")

    allow_non_ct = options.get("allow_non_ct", False)
    if not isinstance(allow_non_ct, bool):
        raise ValueError(f"option 'allow_non_ct' is {allow_non_ct!r}; allowed values: true or false")
    min_slices = options.get("min_slices", 1)
    if isinstance(min_slices, bool) or not isinstance(min_slices, int) or min_slices < 1:
        raise ValueError(f"option 'min_slices' is {min_slices!r}; expected an integer of at least 1")
    monochrome1 = options.get("monochrome1", "as_stored")
    if monochrome1 not in MONOCHROME1_MODES:
        raise ValueError(f"option 'monochrome1' is {monochrome1!r}; allowed values: {list(MONOCHROME1_MODES)}")
    return DicomOptions(allow_non_ct=allow_non_ct, min_slices=min_slices, monochrome1=monochrome1)


def read_dicom(path: Path, options: Mapping[str, Any], skipped: list[SkippedFile] | None = None) -> Iterator[RawSlice]:
    """Read the DICOM CT series under a folder, one slice at a time.

    All headers are read when the function is called; pixel data are decoded
    lazily as the iterator is consumed.

    Per slice, HU = stored value x RescaleSlope + RescaleIntercept (or the
    Modality LUT), with each slice's own values. Pixels equal to
    PixelPaddingValue, or within PixelPaddingRangeLimit, and every HU below
    -1024 become -1024 (air). Slices of an axial series are flipped or
    transposed when needed so that rows run anterior to posterior and
    columns from the patient's right to left. Non-axial series keep their
    stored in-plane orientation.

    With ``skipped`` as a list, a corrupt file is skipped on its own and the
    rest of its series is still read, and ``slice_index`` counts the slices
    actually yielded. A series-level problem (a non-CT modality, mixed slice
    orientations) skips every file of that series.

    Args:
        path: Folder searched recursively, or a single DICOM file.
            ``file_key`` is relative to it.
        options: See ``DicomOptions`` for keys and defaults.
        skipped: None makes the first invalid file raise. A list collects
            invalid files as ``SkippedFile`` and reading goes on.

    Returns:
        Iterator of slices, series by series, ``slice_index`` 0 = most
        superior. ``volume_key`` is the SeriesInstanceUID (the folder path
        when missing) and ``patient_key`` the PatientID (the parent folder
        name when missing).

    Raises:
        ValueError: If an option is unknown or invalid.
        InvalidSourceError: If the path is missing or contains no DICOM image,
            or if no installed decoder supports a file's transfer syntax (both
            even when ``skipped`` is a list). Also for an invalid file or
            series when ``skipped`` is None.
    """
    settings = parse_dicom_options(options)
    source = Path(path)
    if not source.exists():
        raise InvalidSourceError(source, "DICOM source path not found", "Fix 'path' in the source declaration")

    if source.is_file():
        root = source.parent
        files = [source]
    else:
        root = source
        files = sorted(
            (item for item in source.rglob("*") if item.is_file()),
            key=lambda item: _natural_key(item.relative_to(root).as_posix()),
        )
    if not files:
        raise InvalidSourceError(source, "folder is empty", "Point 'path' at the folder that contains the DICOM series")

    headers, found_any = _scan_headers(files, root, skipped)
    if not found_any:
        raise InvalidSourceError(
            source,
            f"no DICOM image files found among {len(files)} file(s)",
            "Point 'path' at the folder that contains the DICOM series",
        )

    groups: dict[tuple[str, str], list[_SliceHeader]] = defaultdict(list)
    for header in headers:
        groups[header.series_key].append(header)
    series = sorted(groups.values(), key=lambda members: _natural_key(members[0].file_key))
    return _generate_slices(series, settings, skipped)


def _natural_key(text: str) -> list[Any]:
    """Split digits from text so that ``img_2`` sorts before ``img_10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def _scan_headers(
    files: Sequence[Path], root: Path, skipped: list[SkippedFile] | None
) -> tuple[list[_SliceHeader], bool]:
    """Read the header of every file.

    Returns:
        The headers of DICOM image files, and whether any DICOM image file
        was found, counting invalid ones.
    """
    headers: list[_SliceHeader] = []
    found_any = False
    for file in files:
        try:
            header = _read_header(file, root)
        except InvalidSourceError as error:
            found_any = True
            _skip_or_raise(error, skipped)
            continue
        if header is not None:
            found_any = True
            headers.append(header)
    return headers, found_any


def _read_header(file: Path, root: Path) -> _SliceHeader | None:
    """Read one file's header, or return None for a non-image or non-DICOM file."""
    try:
        dataset = pydicom.dcmread(file, stop_before_pixels=True)
    except InvalidDicomError as error:
        if file.suffix.lower() == ".dcm":
            problem = f"file has a .dcm suffix but is not a DICOM file ({error})"
            raise InvalidSourceError(file, problem, _SKIP_FIX) from error
        logger.debug("Ignoring %s: not a DICOM file", file)
        return None
    except _PYDICOM_ERRORS as error:
        raise InvalidSourceError(file, f"DICOM header cannot be read ({error})", _SKIP_FIX) from error

    file_meta = getattr(dataset, "file_meta", None)
    sop_class = (file_meta.get("MediaStorageSOPClassUID") if file_meta is not None else None) or dataset.get(
        "SOPClassUID"
    )
    sop_name = UID(str(sop_class)).name if sop_class else ""
    is_image = "Rows" in dataset or "Image" in sop_name
    if sop_class == MediaStorageDirectoryStorage or not is_image:
        logger.debug("Ignoring %s: DICOM file without an image (%s)", file, sop_name or "no SOP class")
        return None

    file_key = file.relative_to(root).as_posix()
    series_uid = _optional_text(dataset.get("SeriesInstanceUID"))
    if series_uid is not None:
        series_key = ("uid", series_uid)
        volume_key = series_uid
    else:
        folder_key = file.parent.relative_to(root).as_posix()
        series_key = ("folder", folder_key)
        volume_key = folder_key

    modality = _optional_text(dataset.get("Modality"))
    photometric = _optional_text(dataset.get("PhotometricInterpretation"))
    return _SliceHeader(
        path=file,
        file_key=file_key,
        series_key=series_key,
        volume_key=volume_key,
        patient_key=_optional_text(dataset.get("PatientID")) or file.parent.name,
        modality=modality.upper() if modality else None,
        photometric=photometric.upper() if photometric else None,
        position=_float_tuple(dataset.get("ImagePositionPatient"), 3),
        orientation=_orientation(dataset.get("ImageOrientationPatient")),
        slice_location=_optional_float(dataset.get("SliceLocation")),
        instance_number=_optional_int(dataset.get("InstanceNumber")),
    )


def _optional_text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _optional_float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _optional_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _float_tuple(value: Any, length: int) -> tuple[float, ...] | None:
    try:
        numbers = tuple(float(item) for item in value)
    except (TypeError, ValueError):
        return None
    if len(numbers) != length or not all(np.isfinite(numbers)):
        return None
    return numbers


def _orientation(value: Any) -> tuple[float, ...] | None:
    """Return the six direction cosines, or None when they do not span a plane."""
    cosines = _float_tuple(value, 6)
    if cosines is None:
        return None
    normal = np.cross(cosines[:3], cosines[3:])
    return cosines if np.linalg.norm(normal) > 0.5 else None


def _generate_slices(
    series: Sequence[list[_SliceHeader]], settings: DicomOptions, skipped: list[SkippedFile] | None
) -> Iterator[RawSlice]:
    for members in series:
        folder = members[0].path.parent
        try:
            is_ct = _check_modality(members, settings)
            ordered = _order_series(members)
        except InvalidSourceError as error:
            _skip_series_or_raise(error, members, skipped)
            continue

        if len(ordered) < settings.min_slices:
            reason = f"series has {len(ordered)} slice(s), fewer than min_slices={settings.min_slices}"
            logger.warning("Leaving out the series in %s: %s", folder, reason)
            if skipped is not None:
                skipped.extend(SkippedFile(path=str(header.path), reason=reason) for header in ordered)
            continue

        transform = _display_transform(ordered[0].orientation)
        if transform is None:
            logger.info("Series in %s is not axial, so its slices keep their stored in-plane orientation", folder)
        if is_ct and settings.monochrome1 == "invert" and any(h.photometric == "MONOCHROME1" for h in ordered):
            logger.info("Series in %s is MONOCHROME1; inverting stored values before rescaling to HU", folder)

        slice_index = 0
        for header in ordered:
            try:
                raw_slice = _read_slice(header, settings, is_ct, transform, slice_index)
            except _MissingDecoderError:
                raise
            except InvalidSourceError as error:
                _skip_or_raise(error, skipped)
                continue
            yield raw_slice
            slice_index += 1


def _check_modality(members: Sequence[_SliceHeader], settings: DicomOptions) -> bool:
    """Return whether the series is CT (Modality CT or missing)."""
    other = sorted({header.modality for header in members if header.modality not in (None, "CT")})
    if not other:
        return True
    if settings.allow_non_ct:
        return False
    raise InvalidSourceError(
        members[0].path.parent,
        f"a series of {len(members)} file(s) has modality {', '.join(other)}, not CT",
        "Remove that series, or set allow_non_ct: true to read it as intensities scaled to [0, 1]",
    )


def _order_series(members: Sequence[_SliceHeader]) -> list[_SliceHeader]:
    """Order slices most superior first by their position along the slice normal.

    Falls back to SliceLocation (descending), then InstanceNumber
    (ascending), then file name, each with a warning, when the position or
    orientation is missing from any slice.
    """
    folder = members[0].path.parent
    if all(header.position is not None and header.orientation is not None for header in members):
        reference = np.asarray(members[0].orientation)
        for header in members:
            if not np.allclose(header.orientation, reference, atol=1e-3):
                raise InvalidSourceError(
                    header.path,
                    f"slice orientation {list(header.orientation)} differs from {list(reference)} "
                    "of another slice in the same series",
                    "Remove localizer or reformatted images from the series, or give them their own series",
                )
        normal = np.cross(reference[:3], reference[3:])
        # A normal that points to the feet (negative z in the patient's LPS frame)
        # is reversed, so that larger distances are always more superior.
        direction = -1.0 if normal[2] < 0 else 1.0
        distances = [direction * float(np.dot(header.position, normal)) for header in members]
        order = sorted(range(len(members)), key=lambda i: (-distances[i], _natural_key(members[i].file_key)))
        if len({round(distance, 3) for distance in distances}) < len(distances):
            logger.warning("Series in %s has slices at the same position; they are kept in file-name order", folder)
        return [members[i] for i in order]

    if all(header.slice_location is not None for header in members):
        logger.warning(
            "Series in %s lacks ImagePositionPatient or ImageOrientationPatient; ordering by descending SliceLocation",
            folder,
        )
        return sorted(members, key=lambda header: -header.slice_location)
    if all(header.instance_number is not None for header in members):
        logger.warning(
            "Series in %s lacks slice positions and SliceLocation; ordering by ascending InstanceNumber", folder
        )
        return sorted(members, key=lambda header: header.instance_number)
    logger.warning(
        "Series in %s has no slice position, SliceLocation or InstanceNumber; keeping file-name order", folder
    )
    return list(members)


def _display_transform(orientation: tuple[float, ...] | None) -> tuple[bool, bool, bool] | None:
    """Find how to bring an axial slice into radiological display.

    DICOM's first three direction cosines give the direction in which the
    column index grows, the last three the direction in which the row index
    grows, in the patient's LPS frame. Display wants columns growing toward
    +x (patient left) and rows toward +y (posterior).

    Returns:
        (transpose, flip_rows, flip_columns), applied in that order, or None
        for a non-axial or unknown orientation.
    """
    if orientation is None:
        return None
    column_step = np.asarray(orientation[:3])
    row_step = np.asarray(orientation[3:])
    normal = np.cross(column_step, row_step)
    if abs(normal[2]) < _AXIAL_NORMAL_MIN_Z:
        return None
    if abs(column_step[0]) >= abs(column_step[1]):
        return False, bool(row_step[1] < 0), bool(column_step[0] < 0)
    return True, bool(column_step[1] < 0), bool(row_step[0] < 0)


def _read_slice(
    header: _SliceHeader,
    settings: DicomOptions,
    is_ct: bool,
    transform: tuple[bool, bool, bool] | None,
    slice_index: int,
) -> RawSlice:
    try:
        dataset = pydicom.dcmread(header.path)
    except _PYDICOM_ERRORS as error:
        raise InvalidSourceError(header.path, f"DICOM file cannot be read ({error})", _SKIP_FIX) from error
    if "PixelData" not in dataset:
        problem = "pixel data element is missing, so the file is probably truncated"
        raise InvalidSourceError(header.path, problem, _SKIP_FIX)
    _require_decoder(dataset, header.path)

    try:
        stored = dataset.pixel_array
    except _PYDICOM_ERRORS as error:
        raise InvalidSourceError(header.path, f"pixel data cannot be decoded ({error})", _SKIP_FIX) from error
    # NOTE: multi-frame files (Enhanced CT) are rejected because their per-frame
    # positions sit in functional group sequences, which this reader does not parse.
    if stored.ndim != 2:
        raise InvalidSourceError(
            header.path,
            f"pixel array has shape {stored.shape}, but only single-frame grayscale slices are supported",
            "Export the series as one single-frame grayscale file per slice",
        )

    if is_ct:
        pixels = _to_hu(dataset, stored, settings.monochrome1)
    else:
        pixels = _to_unit_range(dataset, stored)
    spacing = _pixel_spacing(dataset)

    if transform is not None:
        transpose, flip_rows, flip_columns = transform
        if transpose:
            pixels = pixels.T
            spacing = (spacing[1], spacing[0]) if spacing is not None else None
        if flip_rows:
            pixels = pixels[::-1, :]
        if flip_columns:
            pixels = pixels[:, ::-1]

    thickness = _optional_float(dataset.get("SliceThickness"))
    return RawSlice(
        pixels=np.ascontiguousarray(pixels, dtype=np.float32),
        is_hu=is_ct,
        file_key=header.file_key,
        patient_key=header.patient_key,
        volume_key=header.volume_key,
        slice_index=slice_index,
        spacing_mm=spacing,
        slice_thickness_mm=thickness if thickness is not None and thickness > 0 else None,
    )


def _require_decoder(dataset: pydicom.Dataset, path: Path) -> None:
    transfer_syntax = dataset.file_meta.get("TransferSyntaxUID") if hasattr(dataset, "file_meta") else None
    if transfer_syntax is None or not UID(transfer_syntax).is_compressed:
        return
    transfer_syntax = UID(transfer_syntax)
    try:
        available = get_decoder(transfer_syntax).is_available
    except NotImplementedError:
        available = False
    if not available:
        raise _MissingDecoderError(
            path,
            f"no installed pixel data decoder supports the transfer syntax "
            f"'{transfer_syntax.name}' ({transfer_syntax})",
            _DECODER_FIX,
        )


def _stored_range(dataset: pydicom.Dataset) -> tuple[int, int]:
    """Return the minimum and maximum stored value that BitsStored allows."""
    bits = int(dataset.get("BitsStored") or dataset.get("BitsAllocated") or 16)
    if int(dataset.get("PixelRepresentation") or 0) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _to_hu(dataset: pydicom.Dataset, stored: np.ndarray, monochrome1: str) -> np.ndarray:
    """Convert one slice's stored values to Hounsfield units, padding as air."""
    padding = _padding_mask(dataset, stored)
    values = stored
    if monochrome1 == "invert" and _optional_text(dataset.get("PhotometricInterpretation")) == "MONOCHROME1":
        low, high = _stored_range(dataset)
        values = (low + high) - stored.astype(np.int64)

    if "ModalityLUTSequence" in dataset:
        hu = np.asarray(apply_modality_lut(values, dataset), dtype=np.float32)
    else:
        slope = _optional_float(dataset.get("RescaleSlope"))
        intercept = _optional_float(dataset.get("RescaleIntercept"))
        hu = values.astype(np.float32) * np.float32(1.0 if slope is None else slope)
        hu += np.float32(0.0 if intercept is None else intercept)
    if padding is not None:
        hu[padding] = AIR_HU
    np.maximum(hu, np.float32(AIR_HU), out=hu)
    return hu


def _padding_mask(dataset: pydicom.Dataset, stored: np.ndarray) -> np.ndarray | None:
    padding_value = _stored_int(dataset.get("PixelPaddingValue"), dataset)
    if padding_value is None:
        return None
    range_limit = _stored_int(dataset.get("PixelPaddingRangeLimit"), dataset)
    if range_limit is None:
        return stored == padding_value
    low, high = sorted((padding_value, range_limit))
    return (stored >= low) & (stored <= high)


def _stored_int(value: Any, dataset: pydicom.Dataset) -> int | None:
    """Read a padding value as a stored pixel value, fixing signed values read as unsigned."""
    number = _optional_int(value)
    if number is None:
        return None
    bits = int(dataset.get("BitsAllocated") or 16)
    if int(dataset.get("PixelRepresentation") or 0) == 1 and number >= 2 ** (bits - 1):
        number -= 2**bits
    return number


def _to_unit_range(dataset: pydicom.Dataset, stored: np.ndarray) -> np.ndarray:
    """Scale a non-CT slice to [0, 1] over its stored range, bright = high signal."""
    low, high = _stored_range(dataset)
    scaled = (stored.astype(np.float32) - np.float32(low)) / np.float32(high - low)
    if _optional_text(dataset.get("PhotometricInterpretation")) == "MONOCHROME1":
        scaled = 1.0 - scaled
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def _pixel_spacing(dataset: pydicom.Dataset) -> tuple[float, float] | None:
    """Return PixelSpacing as (row, column) spacing in mm, or None when missing."""
    spacing = _float_tuple(dataset.get("PixelSpacing"), 2)
    if spacing is None or min(spacing) <= 0:
        return None
    return spacing[0], spacing[1]


def _skip_or_raise(error: InvalidSourceError, skipped: list[SkippedFile] | None) -> None:
    if skipped is None:
        raise error
    skipped.append(SkippedFile(path=error.path, reason=error.problem))
    logger.warning("Skipping %s: %s", error.path, error.problem)


def _skip_series_or_raise(
    error: InvalidSourceError, members: Sequence[_SliceHeader], skipped: list[SkippedFile] | None
) -> None:
    if skipped is None:
        raise error
    skipped.extend(SkippedFile(path=str(header.path), reason=error.problem) for header in members)
    logger.warning(
        "Skipping the %d file(s) of the series in %s: %s", len(members), members[0].path.parent, error.problem
    )
