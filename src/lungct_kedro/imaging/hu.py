"""Hounsfield-unit windowing and resizing to the store's fixed slice size."""

from __future__ import annotations

import numpy as np
from skimage.transform import resize

AIR_HU = -1024.0


def apply_window(hu: np.ndarray, level_hu: float, width_hu: float) -> np.ndarray:
    """Map Hounsfield units to [0, 1] through a display window.

    Args:
        hu: Array in Hounsfield units.
        level_hu: Window centre in HU (a lung window uses about -600).
        width_hu: Window width in HU (a lung window uses about 1500).

    Returns:
        float32 array of the same shape, 0 at ``level - width/2`` and below,
        1 at ``level + width/2`` and above.

    Raises:
        ValueError: If ``width_hu`` is not positive.
    """
    if width_hu <= 0:
        raise ValueError(f"window width must be positive, got {width_hu} HU")
    low = level_hu - width_hu / 2.0
    scaled = (np.asarray(hu, dtype=np.float32) - low) / np.float32(width_hu)
    return np.clip(scaled, 0.0, 1.0)


def pad_to_square(array: np.ndarray, fill: float) -> np.ndarray:
    """Pad a 2D array symmetrically with ``fill`` so that it becomes square."""
    height, width = array.shape
    side = max(height, width)
    top = (side - height) // 2
    left = (side - width) // 2
    return np.pad(
        array,
        ((top, side - height - top), (left, side - width - left)),
        mode="constant",
        constant_values=fill,
    )


def resize_image(array: np.ndarray, size: int, fill: float) -> np.ndarray:
    """Pad an image to a square (keeping its aspect ratio) and resize it.

    Uses linear interpolation, with anti-aliasing when shrinking.
    """
    square = pad_to_square(np.asarray(array, dtype=np.float32), fill)
    if square.shape == (size, size):
        return square
    shrinking = square.shape[0] > size
    return resize(square, (size, size), order=1, anti_aliasing=shrinking, preserve_range=True).astype(np.float32)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Pad a class map to a square and resize it with nearest-neighbour sampling."""
    square = pad_to_square(np.asarray(mask, dtype=np.uint8), 0)
    if square.shape == (size, size):
        return square
    resized = resize(square, (size, size), order=0, anti_aliasing=False, preserve_range=True)
    return resized.astype(np.uint8)


def restore_original_geometry(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Undo ``resize_mask``: bring a stored class map back to the source slice's size.

    The square map is resized to the padded side with nearest-neighbour
    sampling and the symmetric padding is cropped off, so the result lines up
    with the slice as its reader produced it.
    """
    side = max(height, width)
    square = np.asarray(mask, dtype=np.uint8)
    if square.shape != (side, side):
        square = resize(square, (side, side), order=0, anti_aliasing=False, preserve_range=True).astype(np.uint8)
    top = (side - height) // 2
    left = (side - width) // 2
    return square[top : top + height, left : left + width]
