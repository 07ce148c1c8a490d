"""Reader for folders of 2D slice images (PNG, JPEG) with optional masks.

Images are read non-recursively from one folder. Masks sit in another folder
and pair with images by file stem (``12.jpg`` pairs with ``12.png``).
Intensities are scaled to [0, 1] by the bit depth, never windowed again,
because such images are usually exported after a display window.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lungct_kedro.readers.base import InvalidSourceError, RawSlice, SkippedFile

logger = logging.getLogger(__name__)

MASK_FORMATS = ("auto", "binary", "index", "palette")
MISSING_MASK_MODES = ("none", "empty", "error")
DEFAULT_EXTENSIONS = (".png", ".jpg", ".jpeg")
DEFAULT_MASK_VALUES = (0, 1, 2)
OPTION_NAMES = (
    "images",
    "masks",
    "mask_format",
    "mask_values",
    "missing_mask",
    "volume_pattern",
    "patient_pattern",
    "slice_pattern",
    "extensions",
)

# ITU-R BT.601 luma weights, the same weights as Pillow's convert("L").
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_COLOUR_MODES = ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "P", "PA", "LAB", "HSV")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# InvalidSourceError subclasses ValueError, so handlers re-raise it before catching these.
_IMAGE_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
_SKIP_FIX = "Re-export or remove the file, or set skip_invalid: true on the source to leave it out"


@dataclass(frozen=True)
class ImageFolderOptions:
    """Validated options of an ``image_folder`` source.

    Attributes:
        images: Folder of the images, relative to the source path.
        masks: Folder of the masks, relative to the source path, or None.
        mask_format: How stored mask values become class indices: ``binary``,
            ``index``, ``palette`` or ``auto``.
        mask_values: Class indices a mask may contain after conversion.
        missing_mask: What an image without a mask gets: ``none`` (no mask),
            ``empty`` (an all-zero mask) or ``error``.
        volume_pattern: Regex on the file stem whose first group is the volume key.
        patient_pattern: Regex on the file stem whose first group is the patient key.
        slice_pattern: Regex on the file stem whose first group is the slice index.
        extensions: Lower-case file suffixes read as images and masks.
    """

    images: str = "."
    masks: str | None = None
    mask_format: str = "auto"
    mask_values: tuple[int, ...] = DEFAULT_MASK_VALUES
    missing_mask: str = "none"
    volume_pattern: re.Pattern[str] | None = None
    patient_pattern: re.Pattern[str] | None = None
    slice_pattern: re.Pattern[str] | None = None
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS


@dataclass(frozen=True)
class _PlannedSlice:
    image_path: Path
    file_key: str
    mask_path: Path | None
    volume_key: str | None
    patient_key: str | None
    slice_index: int


def parse_image_folder_options(options: Mapping[str, Any]) -> ImageFolderOptions:
    """Validate the ``options`` mapping of an ``image_folder`` source.

    Args:
        options: Option names and values from the source declaration.

    Returns:
        The options with defaults filled in and patterns compiled.

    Raises:
        ValueError: If a key is unknown or a value is invalid. The message
            names the key and the allowed keys or values.
    """
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise ValueError(f"unknown image_folder option(s) {unknown}; allowed options: {list(OPTION_NAMES)}")

    mask_format = options.get("mask_format", "auto")
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"option 'mask_format' is {mask_format!r}; allowed values: {list(MASK_FORMATS)}")
    missing_mask = options.get("missing_mask", "none")
    if missing_mask not in MISSING_MASK_MODES:
        raise ValueError(f"option 'missing_mask' is {missing_mask!r}; allowed values: {list(MISSING_MASK_MODES)}")

    return ImageFolderOptions(
        images=_parse_subfolder(options.get("images", "."), "images", allow_none=False) or ".",
        masks=_parse_subfolder(options.get("masks"), "masks", allow_none=True),
        mask_format=mask_format,
        mask_values=_parse_mask_values(options.get("mask_values", DEFAULT_MASK_VALUES)),
        missing_mask=missing_mask,
        volume_pattern=_parse_pattern(options.get("volume_pattern"), "volume_pattern"),
        patient_pattern=_parse_pattern(options.get("patient_pattern"), "patient_pattern"),
        slice_pattern=_parse_pattern(options.get("slice_pattern"), "slice_pattern"),
        extensions=_parse_extensions(options.get("extensions", DEFAULT_EXTENSIONS)),
    )


def _parse_subfolder(value: Any, key: str, allow_none: bool) -> str | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or not value.strip():
        allowed = "a relative folder name or null" if allow_none else "a relative folder name such as '.'"
        raise ValueError(f"option '{key}' is {value!r}; expected {allowed}")
    if Path(value).is_absolute():
        raise ValueError(f"option '{key}' is the absolute path {value!r}; give a folder relative to the source path")
    return value


def _parse_mask_values(value: Any) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise ValueError(f"option 'mask_values' is {value!r}; expected a non-empty list of integers 0-255")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, np.integer)) or not 0 <= item <= 255:
            raise ValueError(f"option 'mask_values' contains {item!r}; every value must be an integer 0-255")
    return tuple(sorted({int(item) for item in value}))


def _parse_pattern(value: Any, key: str) -> re.Pattern[str] | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"option '{key}' is {value!r}; expected a regular expression string or null")
    try:
        pattern = re.compile(value)
    except re.error as error:
        raise ValueError(f"option '{key}' is not a valid regular expression ({error}): {value!r}") from error
    if pattern.groups < 1:
        raise ValueError(f"option '{key}' {value!r} has no capturing group; wrap the part to extract in ( )")
    return pattern


def _parse_extensions(value: Any) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise ValueError(f"option 'extensions' is {value!r}; expected a list such as ['.png', '.jpg']")
    extensions = []
    for item in value:
        if not isinstance(item, str) or not item.startswith(".") or len(item) < 2:
            raise ValueError(f"option 'extensions' contains {item!r}; each entry must start with a dot, e.g. '.png'")
        extensions.append(item.lower())
    return tuple(extensions)


def read_image_folder(
    path: Path, options: Mapping[str, Any], skipped: list[SkippedFile] | None = None
) -> Iterator[RawSlice]:
    """Read a folder of 2D slice images and their optional masks.

    Options and folders are checked when the function is called. Pixels are
    decoded lazily, one image at a time, as the iterator is consumed.

    Args:
        path: Source root folder. ``file_key`` is relative to it.
        options: See ``ImageFolderOptions`` for keys and defaults.
        skipped: None makes the first invalid file raise. A list collects
            invalid files as ``SkippedFile`` and reading goes on.

    Returns:
        Iterator of slices with ``is_hu=False`` and pixels in [0, 1].
        Without ``volume_pattern`` the slices come in natural file-name
        order. With it they come volume by volume, ordered by
        ``slice_pattern`` (or by file name when that is not set).
        ``slice_index`` is the number that ``slice_pattern`` parses, not
        renumbered, and whether it grows toward the head or the feet is
        unknown. Without ``slice_pattern`` it is the position in file-name
        order within the volume, or 0 when there is no ``volume_pattern``.

    Raises:
        ValueError: If an option is unknown or invalid.
        InvalidSourceError: If the path or a configured folder is missing or
            contains no images (even when ``skipped`` is a list), or if a file is
            invalid and ``skipped`` is None.
    """
    settings = parse_image_folder_options(options)
    root = Path(path)
    _require_folder(root, "source path", "fix 'path' in the source declaration")
    image_dir = root / settings.images
    _require_folder(image_dir, "images folder", "fix the 'images' option (a folder relative to the source path)")

    image_files = _list_files(image_dir, settings.extensions)
    if not image_files:
        raise InvalidSourceError(
            image_dir,
            f"no image files with extensions {list(settings.extensions)} found",
            "Point 'path' and the 'images' option at the folder of slices, or set 'extensions'",
        )

    mask_by_stem: dict[str, Path] = {}
    if settings.masks is not None:
        mask_dir = root / settings.masks
        _require_folder(mask_dir, "masks folder", "fix the 'masks' option or set it to null")
        mask_by_stem = _index_by_stem(_list_files(mask_dir, settings.extensions), "mask")
        image_stems = set(_index_by_stem(image_files, "image"))
        orphans = sorted(stem for stem in mask_by_stem if stem not in image_stems)
        if orphans:
            logger.warning(
                "%d mask file(s) in %s have no image with the same stem and are ignored, e.g. %s",
                len(orphans),
                mask_dir,
                [mask_by_stem[stem].name for stem in orphans[:5]],
            )

    plan = _plan_slices(image_files, root, settings, mask_by_stem, skipped)
    return _generate_slices(plan, settings, skipped)


def _require_folder(folder: Path, what: str, fix: str) -> None:
    if not folder.exists():
        raise InvalidSourceError(folder, f"{what} not found", fix[0].upper() + fix[1:])
    if not folder.is_dir():
        raise InvalidSourceError(folder, f"{what} is a file, not a folder", fix[0].upper() + fix[1:])


def _list_files(folder: Path, extensions: Sequence[str]) -> list[Path]:
    files = [item for item in folder.iterdir() if item.is_file() and item.suffix.lower() in extensions]
    return sorted(files, key=lambda item: _natural_key(item.name))


def _natural_key(text: str) -> list[Any]:
    """Split digits from text so that ``slice_2`` sorts before ``slice_10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def _index_by_stem(files: Sequence[Path], kind: str) -> dict[str, Path]:
    by_stem: dict[str, Path] = {}
    for file in files:
        if file.stem in by_stem:
            raise InvalidSourceError(
                file,
                f"two {kind} files share the stem '{file.stem}' ({by_stem[file.stem].name} and {file.name}), "
                "so masks cannot be paired by stem",
                "Keep one file per stem or restrict 'extensions'",
            )
        by_stem[file.stem] = file
    return by_stem


def _plan_slices(
    image_files: Sequence[Path],
    root: Path,
    settings: ImageFolderOptions,
    mask_by_stem: Mapping[str, Path],
    skipped: list[SkippedFile] | None,
) -> list[_PlannedSlice]:
    """Parse keys from file stems and order the slices, without decoding pixels."""
    parsed: list[tuple[Path, str | None, str | None, int | None]] = []
    for image_path in image_files:
        try:
            volume_key = _match_group(settings.volume_pattern, image_path, "volume_pattern")
            patient_key = _match_group(settings.patient_pattern, image_path, "patient_pattern")
            slice_text = _match_group(settings.slice_pattern, image_path, "slice_pattern")
            slice_number = _parse_slice_number(slice_text, image_path) if slice_text is not None else None
        except InvalidSourceError as error:
            _skip_or_raise(error, skipped)
            continue
        parsed.append((image_path, volume_key, patient_key, slice_number))

    groups: dict[str | None, list[tuple[Path, str | None, str | None, int | None]]] = defaultdict(list)
    for item in parsed:
        groups[item[1]].append(item)

    plan: list[_PlannedSlice] = []
    for volume_key in sorted(groups, key=lambda key: _natural_key(key or "")):
        members = groups[volume_key]
        if settings.slice_pattern is not None:
            members = sorted(members, key=lambda item: item[3])
            members = _drop_duplicate_slice_numbers(members, skipped)
        for position, (image_path, _, patient_key, slice_number) in enumerate(members):
            if slice_number is not None:
                slice_index = slice_number
            elif settings.volume_pattern is not None:
                slice_index = position
            else:
                slice_index = 0
            plan.append(
                _PlannedSlice(
                    image_path=image_path,
                    file_key=image_path.relative_to(root).as_posix(),
                    mask_path=mask_by_stem.get(image_path.stem),
                    volume_key=volume_key,
                    patient_key=patient_key,
                    slice_index=slice_index,
                )
            )
    return plan


def _match_group(pattern: re.Pattern[str] | None, image_path: Path, key: str) -> str | None:
    if pattern is None:
        return None
    match = pattern.search(image_path.stem)
    if match is None or match.group(1) is None:
        raise InvalidSourceError(
            image_path,
            f"option '{key}' ({pattern.pattern!r}) does not match the file stem '{image_path.stem}'",
            f"Adjust '{key}' so that its first group matches every file name, or remove the file",
        )
    return match.group(1)


def _parse_slice_number(text: str, image_path: Path) -> int:
    try:
        return int(text)
    except ValueError:
        raise InvalidSourceError(
            image_path,
            f"option 'slice_pattern' captured {text!r}, which is not an integer slice index",
            "Make the first group of 'slice_pattern' capture digits only, for example '_(\\d+)$'",
        ) from None


def _drop_duplicate_slice_numbers(
    members: list[tuple[Path, str | None, str | None, int | None]], skipped: list[SkippedFile] | None
) -> list[tuple[Path, str | None, str | None, int | None]]:
    kept: list[tuple[Path, str | None, str | None, int | None]] = []
    for item in members:
        if kept and kept[-1][3] == item[3]:
            error = InvalidSourceError(
                item[0],
                f"slice index {item[3]} of this volume is also parsed from {kept[-1][0].name}",
                "Rename or remove one of the two files, or fix 'volume_pattern' and 'slice_pattern'",
            )
            _skip_or_raise(error, skipped)
            continue
        kept.append(item)
    return kept


def _generate_slices(
    plan: Sequence[_PlannedSlice], settings: ImageFolderOptions, skipped: list[SkippedFile] | None
) -> Iterator[RawSlice]:
    colour_logged = False
    for planned in plan:
        try:
            pixels, was_colour = _load_pixels(planned.image_path)
            mask = _mask_for(planned, pixels.shape, settings)
        except InvalidSourceError as error:
            _skip_or_raise(error, skipped)
            continue

        if was_colour and not colour_logged:
            logger.info(
                "Colour images found (first: %s); converting them to grayscale with ITU-R BT.601 luma weights",
                planned.image_path,
            )
            colour_logged = True

        yield RawSlice(
            pixels=pixels,
            is_hu=False,
            file_key=planned.file_key,
            mask=mask,
            patient_key=planned.patient_key,
            volume_key=planned.volume_key,
            slice_index=planned.slice_index,
        )


def _load_pixels(image_path: Path) -> tuple[np.ndarray, bool]:
    """Decode an image to float32 intensities in [0, 1].

    Returns:
        The 2D pixel array and whether the file was a colour image.
    """
    try:
        with Image.open(image_path) as image:
            image.load()
            return _to_intensity(image, image_path)
    except InvalidSourceError:
        raise
    except _IMAGE_DECODE_ERRORS as error:
        raise InvalidSourceError(image_path, f"image cannot be decoded ({error})", _SKIP_FIX) from error


def _to_intensity(image: Image.Image, image_path: Path) -> tuple[np.ndarray, bool]:
    mode = image.mode
    if mode == "1":
        return np.asarray(image, dtype=np.float32), False
    if mode == "L":
        return np.asarray(image, dtype=np.float32) / np.float32(255.0), False
    if mode == "LA":
        return np.asarray(image.getchannel(0), dtype=np.float32) / np.float32(255.0), False
    if mode in _SIXTEEN_BIT_MODES:
        return np.asarray(image).astype(np.float32) / np.float32(65535.0), False
    if mode == "I":
        # Pillow opens some 16-bit grayscale files as 32-bit mode I.
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise InvalidSourceError(
                image_path,
                f"32-bit grayscale values {values.min()}..{values.max()} exceed the 16-bit range",
                "Save the slice as an 8-bit or 16-bit grayscale PNG",
            )
        return values.astype(np.float32) / np.float32(65535.0), False
    if mode in _COLOUR_MODES:
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
        return (rgb @ _LUMA_WEIGHTS) / np.float32(255.0), True
    raise InvalidSourceError(
        image_path,
        f"image mode {mode!r} is not supported",
        "Save the slice as an 8-bit or 16-bit grayscale, or RGB, PNG or JPEG",
    )


def _mask_for(planned: _PlannedSlice, image_shape: tuple[int, ...], settings: ImageFolderOptions) -> np.ndarray | None:
    if settings.masks is None:
        return None
    if planned.mask_path is not None:
        return _load_mask(planned.mask_path, planned.image_path, image_shape, settings)
    if settings.missing_mask == "empty":
        return np.zeros(image_shape, dtype=np.uint8)
    if settings.missing_mask == "error":
        raise InvalidSourceError(
            planned.image_path,
            f"no mask with the stem '{planned.image_path.stem}' in the masks folder '{settings.masks}'",
            "Add the mask, or set missing_mask to 'empty' (all background) or 'none' (no mask)",
        )
    return None


def _load_mask(
    mask_path: Path, image_path: Path, image_shape: tuple[int, ...], settings: ImageFolderOptions
) -> np.ndarray:
    """Decode a mask and convert it to uint8 class indices.

    Palette (mode P) masks are read as their stored indices, never as the
    colours the palette draws.
    """
    try:
        with Image.open(mask_path) as image:
            image.load()
            mode = image.mode
            if mode in ("LA", "PA"):
                values = np.asarray(image.getchannel(0))
            elif mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr"):
                raise InvalidSourceError(
                    mask_path,
                    f"mask is a colour image (mode {mode}), so class indices cannot be read from it",
                    "Save masks as grayscale or palette PNGs that store class indices",
                )
            else:
                values = np.asarray(image)
    except InvalidSourceError:
        raise
    except _IMAGE_DECODE_ERRORS as error:
        raise InvalidSourceError(mask_path, f"mask cannot be decoded ({error})", _SKIP_FIX) from error

    if values.shape != tuple(image_shape):
        raise InvalidSourceError(
            image_path,
            f"image {image_path.name} is {_size_text(image_shape)} pixels but its mask {mask_path} is "
            f"{_size_text(values.shape)} pixels (width x height)",
            "Re-export the pair at the same size or remove them",
        )

    mask_format = settings.mask_format
    found = np.unique(values)
    if mask_format == "auto":
        if mode in ("P", "PA"):
            mask_format = "palette"
        elif set(found.tolist()) <= {0, 255}:
            mask_format = "binary"
        else:
            mask_format = "index"

    if mask_format == "palette" and mode not in ("P", "PA"):
        raise InvalidSourceError(
            mask_path,
            f"mask_format is 'palette' but the mask has mode {mode}, not a palette (mode P)",
            "Set mask_format to 'index' or 'auto' for grayscale masks",
        )
    if mask_format == "binary":
        found_set = set(found.tolist())
        if found_set <= {0, 255}:
            values = values == 255
        elif not found_set <= {0, 1}:
            raise InvalidSourceError(
                mask_path,
                f"binary mask contains values {sorted(found_set)}, expected only {{0, 255}} or {{0, 1}}",
                "Set mask_format to 'index' or 'palette' for masks with class indices",
            )
        values = values.astype(np.uint8)
        found = np.unique(values)

    outside = sorted(set(found.tolist()) - set(settings.mask_values))
    if outside:
        raise InvalidSourceError(
            mask_path,
            f"mask values {outside} are outside mask_values {list(settings.mask_values)}",
            "Fix the mask, or change the source's 'mask_values' option if these classes are expected",
        )
    return values.astype(np.uint8)


def _size_text(shape: tuple[int, ...]) -> str:
    """Format a (rows, columns) shape as Pillow's width x height."""
    return f"{shape[1]}x{shape[0]}"


def _skip_or_raise(error: InvalidSourceError, skipped: list[SkippedFile] | None) -> None:
    if skipped is None:
        raise error
    skipped.append(SkippedFile(path=error.path, reason=error.problem))
    logger.warning("Skipping %s: %s", error.path, error.problem)
