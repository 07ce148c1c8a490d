"""Post-processing of predicted class maps: a lung mask from the image, small-lesion removal."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.measure import label, regionprops
from skimage.morphology import disk

logger = logging.getLogger(__name__)

POSTPROCESS_DEFAULTS: dict[str, Any] = {"lung_mask": False, "min_component_pixels": 0}

# A lung region smaller than this share of the slice is taken as noise (the trachea, bowel gas).
MIN_LUNG_SHARE = 0.005
# Below this share of the slice, no lung was found and the mask is not applied.
MIN_MASK_SHARE = 0.02
# A dark region with more of its outline on the slice border is outside air.
# NOTE: chosen on phantom slices and the real sample's cropped JPEG slices, not on full-field scans.
MAX_OUTLINE_ON_BORDER = 1 / 3
# Rows and columns at or below this level throughout are the store's zero padding.
PADDING_LEVEL = 0.01
# Lung parenchyma contains vessels, which outside air lacks.
MIN_LUNG_VESSELS = 3


def _content_box(image: np.ndarray) -> tuple[slice, slice]:
    """Return the rows and columns that are not zero padding (the store pads slices to a square with 0)."""
    content = image > PADDING_LEVEL
    rows, columns = np.flatnonzero(content.any(axis=1)), np.flatnonzero(content.any(axis=0))
    if len(rows) == 0:
        return slice(0, image.shape[0]), slice(0, image.shape[1])
    return slice(rows[0], rows[-1] + 1), slice(columns[0], columns[-1] + 1)


def _outline_on_border_share(region: np.ndarray) -> float:
    """Return the share of a region's outline pixels that lie on the border of its array."""
    outline = region & ~ndimage.binary_erosion(region, border_value=0)
    frame = np.zeros(region.shape, dtype=bool)
    frame[[0, -1], :] = True
    frame[:, [0, -1]] = True
    return float((outline & frame).sum()) / max(int(outline.sum()), 1)


def _count_vessel_holes(region: np.ndarray) -> int:
    """Count the small bright holes (vessels, at least 2 px and under 1 % of the array) inside a dark region."""
    holes = label(ndimage.binary_fill_holes(region) & ~region, connectivity=1)
    sizes = np.bincount(holes.ravel())[1:]
    return int(np.count_nonzero((sizes >= 2) & (sizes < 0.01 * region.size)))


def derive_lung_mask(image: np.ndarray) -> np.ndarray:
    """Estimate the lungs of a windowed CT slice from its intensities.

    Steps, inside the part of the slice that is not zero padding:

    1. an Otsu threshold separates dark (air, lung) from bright (tissue,
       bone) pixels;
    2. dark regions that have more than a third of their outline on the
       border and contain fewer than three vessels (small bright holes) are
       outside air and are dropped. A lung cut by the edge of a tight crop
       still contains its vessels;
    3. a closing joins lung fragments split by ground-glass opacity and
       vessels, and regions under 0.5 % of the slice are dropped;
    4. each remaining region is replaced by its convex hull, holes are
       filled and the mask grows by one pixel, which takes in dense lesions
       that cut into the lung from the pleura.

    The mask is generous on purpose: it may cover some mediastinum at the
    hilum, and it serves to remove predictions in the chest wall, spine,
    heart and outside the body.

    Args:
        image: (H, W) slice with intensities in [0, 1] after a lung window
            (bright tissue, dark lung), as in the slice store.

    Returns:
        Boolean (H, W) lung mask. When no lung region is found (a uniform
        slice, or lungs under 2 % of the slice) the mask is all True, so
        applying it changes nothing.
    """
    image = np.asarray(image, dtype=np.float32)
    everything = np.ones(image.shape, dtype=bool)
    rows, columns = _content_box(image)
    content = image[rows, columns]
    if content.size == 0 or float(content.max()) - float(content.min()) < 1e-3:
        return everything
    side = min(content.shape)
    dark = content < threshold_otsu(content)

    regions = label(dark, connectivity=1)
    for region in regionprops(regions):
        top, left, bottom, right = region.bbox
        touches_border = top == 0 or left == 0 or bottom == content.shape[0] or right == content.shape[1]
        if not touches_border:
            continue
        pixels = regions == region.label
        if _outline_on_border_share(pixels) > MAX_OUTLINE_ON_BORDER and _count_vessel_holes(pixels) < MIN_LUNG_VESSELS:
            dark[pixels] = False

    dark = ndimage.binary_closing(dark, structure=disk(max(1, round(side / 32))), border_value=0)
    regions = label(ndimage.binary_fill_holes(dark), connectivity=1)
    lungs = np.zeros(content.shape, dtype=bool)
    for region in regionprops(regions):
        if region.area >= MIN_LUNG_SHARE * image.size:
            top, left, bottom, right = region.bbox
            lungs[top:bottom, left:right] |= region.image_convex
    lungs = ndimage.binary_dilation(ndimage.binary_fill_holes(lungs), structure=disk(1))
    if lungs.sum() < MIN_MASK_SHARE * image.size:
        return everything
    mask = np.zeros(image.shape, dtype=bool)
    mask[rows, columns] = lungs
    return mask


def remove_small_lesions(class_map: np.ndarray, min_pixels: int) -> np.ndarray:
    """Set lesion components (any class, 8-connected) smaller than ``min_pixels`` to background.

    A component that mixes ground-glass and consolidation counts as one
    lesion. ``min_pixels`` ≤ 1 returns the map unchanged.
    """
    if min_pixels <= 1:
        return class_map
    # Counted with label + bincount: skimage's remove_small_objects changed its size argument in 0.26.
    components = label(class_map > 0, connectivity=2)
    sizes = np.bincount(components.ravel())
    small = sizes < min_pixels
    small[0] = False
    return np.where(small[components], 0, class_map).astype(class_map.dtype)


def postprocess_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Complete ``segmentation.inference.postprocess`` with its defaults and check it.

    Raises:
        ValueError: An unknown key or a negative ``min_component_pixels``.
    """
    options = dict(options or {})
    unknown = set(options) - set(POSTPROCESS_DEFAULTS)
    if unknown:
        raise ValueError(
            f"unknown parameter segmentation.inference.postprocess.{sorted(unknown)[0]}; "
            f"the keys allowed are {sorted(POSTPROCESS_DEFAULTS)}"
        )
    merged = {**POSTPROCESS_DEFAULTS, **options}
    merged["lung_mask"] = bool(merged["lung_mask"])
    merged["min_component_pixels"] = int(merged["min_component_pixels"])
    if merged["min_component_pixels"] < 0:
        raise ValueError(
            "segmentation.inference.postprocess.min_component_pixels must be 0 or more, "
            f"got {merged['min_component_pixels']}"
        )
    return merged


def postprocess_class_maps(
    class_maps: np.ndarray, images: np.ndarray, options: Mapping[str, Any] | None
) -> np.ndarray:
    """Apply the lung mask and small-lesion removal to predicted class maps.

    Args:
        class_maps: (n, H, W) uint8 predictions.
        images: (n, H, W) the slices they were predicted from, in [0, 1].
        options: ``lung_mask`` (bool) and ``min_component_pixels`` (int);
            see ``postprocess_options``.

    Returns:
        The processed maps, a new array of the same shape and dtype.
    """
    settings = postprocess_options(options)
    processed = np.array(class_maps, copy=True)
    for index in range(len(processed)):
        if settings["lung_mask"]:
            processed[index][~derive_lung_mask(images[index])] = 0
        processed[index] = remove_small_lesions(processed[index], settings["min_component_pixels"])
    return processed
