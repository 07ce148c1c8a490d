"""Image-quality metrics for batches of windowed CT slices.

Every function takes a batch ``images`` of shape (N, H, W) with intensities in
[0, 1] (float16, float32 or float64, a memory-mapped array works) and returns
a float64 array of shape (N,), one value per slice. The batch is read in
chunks, so tens of thousands of slices need only one chunk in memory at a
time, and each chunk is computed with whole-array numpy and scipy operations.

The curation pipeline uses these metrics to find noisy, badly exposed,
low-contrast and hazy slices; the dehazing pipeline reports them on its
outputs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
from scipy import ndimage

logger = logging.getLogger(__name__)

#: Maximum number of slices read into memory at once.
DEFAULT_CHUNK_SIZE = 256
#: Maximum number of pixels in one chunk (16 Mi float32 values, 64 MiB), so
#: large slices get smaller chunks.
MAX_CHUNK_PIXELS = 2**24
#: Median of |X| for a standard normal X (its 75th percentile), which turns a
#: median absolute coefficient into a sigma.
MAD_TO_SIGMA = 0.6745

#: Default intensity below which ``underexposed_fraction`` counts a pixel.
UNDEREXPOSED_THRESHOLD = 0.02
#: Default intensity above which ``overexposed_fraction`` counts a pixel.
OVEREXPOSED_THRESHOLD = 0.98
#: Default percentiles of ``dynamic_range``.
DYNAMIC_RANGE_PERCENTILES = (1.0, 99.0)
#: Default local-minimum window of ``haze_score`` in pixels.
HAZE_WINDOW_PX = 7

#: HU range counted as soft tissue by ``lung_soft_tissue_cnr``.
SOFT_TISSUE_HU = (-100.0, 100.0)
#: HU range counted as aerated lung parenchyma by ``lung_soft_tissue_cnr``.
LUNG_HU = (-950.0, -700.0)

#: Columns of ``compute_quality_table``, in order.
METRIC_NAMES = (
    "noise_sigma",
    "rms_contrast",
    "mean_exposure",
    "underexposed_fraction",
    "overexposed_fraction",
    "dynamic_range",
    "laplacian_variance",
    "haze_score",
    "lung_soft_tissue_cnr",
)


def _check_batch(images: np.ndarray, name: str = "images") -> np.ndarray:
    array = np.asarray(images) if not isinstance(images, np.ndarray) else images
    if array.ndim != 3:
        raise ValueError(
            f"{name} has shape {array.shape}; expected a batch of shape (N, H, W), "
            "so add a leading axis for a single slice (image[None])"
        )
    return array


def _chunk_length(images: np.ndarray, chunk_size: int) -> int:
    if chunk_size < 1:
        raise ValueError(f"chunk_size is {chunk_size}; it must be at least 1 slice")
    pixels_per_slice = max(1, int(images.shape[1]) * int(images.shape[2]))
    return max(1, min(chunk_size, MAX_CHUNK_PIXELS // pixels_per_slice))


def _iter_chunks(images: np.ndarray, chunk_size: int) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield (rows, float32 copy of those rows) for consecutive chunks of the batch."""
    step = _chunk_length(images, chunk_size)
    for start in range(0, len(images), step):
        rows = slice(start, min(start + step, len(images)))
        yield rows, np.asarray(images[rows], dtype=np.float32)


def _map_chunks(
    images: np.ndarray, metric: Callable[[np.ndarray], np.ndarray], chunk_size: int, name: str = "images"
) -> np.ndarray:
    images = _check_batch(images, name)
    result = np.empty(len(images), dtype=np.float64)
    for rows, chunk in _iter_chunks(images, chunk_size):
        result[rows] = metric(chunk)
    return result


def _flat(chunk: np.ndarray) -> np.ndarray:
    return chunk.reshape(len(chunk), -1)


# Per-chunk kernels: each takes a float32 chunk (n, H, W) and returns (n,).


def _noise_sigma_chunk(chunk: np.ndarray) -> np.ndarray:
    # The finest orthonormal Haar diagonal (HH) coefficient of a 2 x 2 block
    # [[a, b], [c, d]] is (a - b - c + d) / 2. Its noise part has the pixel
    # noise sigma, and its signal part is nearly zero on smooth anatomy.
    height = chunk.shape[1] - chunk.shape[1] % 2
    width = chunk.shape[2] - chunk.shape[2] % 2
    if height == 0 or width == 0:
        return np.full(len(chunk), np.nan)
    even = chunk[:, :height, :width]
    top_left, top_right = even[:, 0::2, 0::2], even[:, 0::2, 1::2]
    bottom_left, bottom_right = even[:, 1::2, 0::2], even[:, 1::2, 1::2]
    diagonal = _flat(np.abs(top_left - top_right - bottom_left + bottom_right) / 2.0)

    # Blocks of four identical pixels (padding, clipped or masked air) carry no
    # noise, and when they cover more than half of a slice the plain median is 0.
    flat_block = _flat((top_left == top_right) & (top_left == bottom_left) & (top_left == bottom_right))
    masked = np.where(flat_block, np.nan, diagonal)
    n_informative = (~flat_block).sum(axis=1)
    sigma = np.zeros(len(chunk))
    has_informative = n_informative > 0
    if has_informative.any():
        sigma[has_informative] = np.nanmedian(masked[has_informative], axis=1) / MAD_TO_SIGMA
    return sigma


def _laplacian_variance_chunk(chunk: np.ndarray) -> np.ndarray:
    if chunk.shape[1] < 3 or chunk.shape[2] < 3:
        return np.full(len(chunk), np.nan)
    centre = chunk[:, 1:-1, 1:-1]
    laplacian = chunk[:, :-2, 1:-1] + chunk[:, 2:, 1:-1] + chunk[:, 1:-1, :-2] + chunk[:, 1:-1, 2:] - 4.0 * centre
    return _flat(laplacian).astype(np.float64).var(axis=1)


def _haze_score_chunk(chunk: np.ndarray, window: int) -> np.ndarray:
    # Grayscale dark channel: a 3 x 3 mean first, so that noise does not pull
    # the local minimum down, then the minimum over window x window pixels.
    smoothed = ndimage.uniform_filter(chunk, size=(1, 3, 3), mode="nearest")
    dark_channel = ndimage.minimum_filter(smoothed, size=(1, window, window), mode="nearest")
    return np.clip(_flat(dark_channel).astype(np.float64).mean(axis=1), 0.0, 1.0)


def noise_sigma(images: np.ndarray, chunk_size: int = DEFAULT_CHUNK_SIZE) -> np.ndarray:
    """Estimate the standard deviation of additive noise in each slice.

    Uses Donoho's robust estimator: the median absolute value of the finest
    diagonal (HH) Haar wavelet coefficients divided by 0.6745. Coefficients of
    2 x 2 blocks whose four pixels are identical (padding, clipped or masked
    regions) are left out of the median, and a slice made only of such blocks
    scores 0. An odd last row or column is dropped.

    Args:
        images: Batch (N, H, W) with intensities in [0, 1].
        chunk_size: Maximum slices read into memory at once.

    Returns:
        Noise sigma per slice, in intensity units (fraction of the window
        width), float64 of shape (N,).

    Raises:
        ValueError: ``images`` is not 3D, or ``chunk_size`` is below 1.
    """
    return _map_chunks(images, _noise_sigma_chunk, chunk_size)


def rms_contrast(images: np.ndarray, chunk_size: int = DEFAULT_CHUNK_SIZE) -> np.ndarray:
    """Compute the RMS contrast (standard deviation of intensities) of each slice.

    Args:
        images: Batch (N, H, W) with intensities in [0, 1].
        chunk_size: Maximum slices read into memory at once.

    Returns:
        RMS contrast per slice in intensity units, in [0, 0.5], float64 (N,).

    Raises:
        ValueError: ``images`` is not 3D, or ``chunk_size`` is below 1.
    """
    return _map_chunks(images, lambda chunk: _flat(chunk).std(axis=1, dtype=np.float64), chunk_size)


def mean_exposure(images: np.ndarray, chunk_size: int = DEFAULT_CHUNK_SIZE) -> np.ndarray:
    """Compute the mean intensity of each slice.

    Args:
        images: Batch (N, H, W) with intensities in [0, 1].
        chunk_size: Maximum slices read into memory at once.

    Returns:
        Mean intensity per slice, in [0, 1], float64 (N,).

    Raises:
        ValueError: ``images`` is not 3D, or ``chunk_size`` is below 1.
    """
    return _map_chunks(images, lambda chunk: _flat(chunk).mean(axis=1, dtype=np.float64), chunk_size)


def underexposed_fraction(
    images: np.ndarray, threshold: float = UNDEREXPOSED_THRESHOLD, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> np.ndarray:
    """Compute the fraction of pixels strictly below ``threshold`` in each slice.

    Args:
        images: Batch (N, H, W) with intensities in [0, 1].
        threshold: Intensity below which a pixel counts as clipped to black.
        chunk_size: Maximum slices read into memory at once.

    Returns:
        Fraction per slice, in [0, 1], float64 (N,).

    Raises:
        ValueError: ``images`` is not 3D, or ``chunk_size`` is below 1.
    """
    return _map_chunks(images, lambda chunk: (_flat(chunk) < threshold).mean(axis=1), chunk_size)


def overexposed_fraction(
    images: np.ndarray, threshold: float = OVEREXPOSED_THRESHOLD, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> np.ndarray:
    """Compute the fraction of pixels strictly above ``threshold`` in each slice.

    Args:
        images: Batch (N, H, W) with intensities in [0, 1].
        threshold: Intensity above which a pixel counts as clipped to white.
        chunk_size: Maximum slices read into memory at once.

    Returns:
        Fraction per slice, in [0, 1], float64 (N,).

    Raises:
        ValueError: ``images`` is not 3D, or ``chunk_size`` is below 1.
    """
    return _map_chunks(images, lambda chunk: (_flat(chunk) > threshold).mean(axis=1), chunk_size)


def dynamic_range(
    images: np.ndarray,
    low_percentile: float = DYNAMIC_RANGE_PERCENTILES[0],
    high_percentile: float = DYNAMIC_RANGE_PERCENTILES[1],
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> np.ndarray:
    """Compute the intensity spread between two percentiles of each slice.

    Args:
        images: Batch (N, H, W) with intensities in [0, 1].
        low_percentile: Lower percentile, in [0, 100].
        high_percentile: Upper percentile, in [0, 100], above ``low_percentile``.
        chunk_size: Maximum slices read into memory at once.

    Returns:
        ``percentile(high) - percentile(low)`` per slice, in [0, 1], float64 (N,).

    Raises:
        ValueError: ``images`` is not 3D, ``chunk_size`` is below 1, or the
            percentiles are outside [0, 100] or not increasing.
    """
    if not 0.0 <= low_percentile < high_percentile <= 100.0:
        raise ValueError(
            f"dynamic_range percentiles ({low_percentile}, {high_percentile}) are invalid; "
            "use 0 <= low_percentile < high_percentile <= 100"
        )

    def spread(chunk: np.ndarray) -> np.ndarray:
        low, high = np.percentile(_flat(chunk), [low_percentile, high_percentile], axis=1)
        return (high - low).astype(np.float64)

    return _map_chunks(images, spread, chunk_size)


def laplacian_variance(images: np.ndarray, chunk_size: int = DEFAULT_CHUNK_SIZE) -> np.ndarray:
    """Compute the variance of the discrete Laplacian of each slice (sharpness).

    The Laplacian is the 4-neighbour stencil ``up + down + left + right -
    4 * centre`` on interior pixels, so border pixels do not contribute. Blur
    lowers it; noise raises it.

    Args:
        images: Batch (N, H, W) with intensities in [0, 1], H and W at least 3.
        chunk_size: Maximum slices read into memory at once.

    Returns:
        Laplacian variance per slice, in squared intensity units, float64 (N,);
        NaN for slices smaller than 3 x 3 pixels.

    Raises:
        ValueError: ``images`` is not 3D, or ``chunk_size`` is below 1.
    """
    return _map_chunks(images, _laplacian_variance_chunk, chunk_size)


def haze_score(images: np.ndarray, window: int = HAZE_WINDOW_PX, chunk_size: int = DEFAULT_CHUNK_SIZE) -> np.ndarray:
    """Score the haze veil of each slice with a grayscale dark channel.

    ``haze_score = mean over pixels of min over a window x window neighbourhood
    of the 3 x 3 mean-filtered image``, the single-channel form of the dark
    channel prior used for natural-image dehazing. A clean slice has dark air
    and lung in most neighbourhoods, so its dark channel is low. The haze
    model ``I * t + A * (1 - t)`` with an airlight ``A`` brighter than the dark
    pixels lifts every local minimum. Higher means hazier. Underexposure lowers the score,
    while overexposure, which also washes out detail, raises it.

    Args:
        images: Batch (N, H, W) with intensities in [0, 1].
        window: Side of the local-minimum neighbourhood in pixels, at least 1.
        chunk_size: Maximum slices read into memory at once.

    Returns:
        Haze score per slice, in [0, 1], float64 (N,).

    Raises:
        ValueError: ``images`` is not 3D, ``chunk_size`` is below 1, or
            ``window`` is below 1.
    """
    if window < 1:
        raise ValueError(f"haze_score window is {window}; it must be at least 1 pixel")
    return _map_chunks(images, lambda chunk: _haze_score_chunk(chunk, window), chunk_size)


def lung_soft_tissue_cnr(hu: np.ndarray, min_pixels: int = 50, chunk_size: int = DEFAULT_CHUNK_SIZE) -> np.ndarray:
    """Compute the contrast-to-noise ratio between soft tissue and lung in HU.

    ``CNR = |mean(soft tissue) - mean(lung)| / std(lung)``, where soft tissue
    is every pixel in [-100, 100] HU and lung every pixel in [-950, -700] HU
    (both ends included), and ``std`` is the population standard deviation.
    Noise widens the lung HU distribution, so the CNR drops with dose.

    Args:
        hu: Batch (N, H, W) of Hounsfield units, integer or float.
        min_pixels: Minimum number of pixels in each region for a value.
        chunk_size: Maximum slices read into memory at once.

    Returns:
        CNR per slice (dimensionless, >= 0), float64 (N,). NaN where either
        region has fewer than ``min_pixels`` pixels (for example a slice
        without HU, stored as -1024 everywhere, or one above the lungs) or
        where the lung region is uniform (standard deviation 0).

    Raises:
        ValueError: ``hu`` is not 3D, or ``chunk_size`` is below 1.
    """

    def cnr(chunk: np.ndarray) -> np.ndarray:
        values = _flat(chunk).astype(np.float64)
        soft = (values >= SOFT_TISSUE_HU[0]) & (values <= SOFT_TISSUE_HU[1])
        lung = (values >= LUNG_HU[0]) & (values <= LUNG_HU[1])
        n_soft = soft.sum(axis=1)
        n_lung = lung.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_soft = np.where(soft, values, 0.0).sum(axis=1) / n_soft
            mean_lung = np.where(lung, values, 0.0).sum(axis=1) / n_lung
            squared_deviation = np.where(lung, values - mean_lung[:, None], 0.0) ** 2
            std_lung = np.sqrt(squared_deviation.sum(axis=1) / n_lung)
            ratio = np.abs(mean_soft - mean_lung) / std_lung
        valid = (n_soft >= min_pixels) & (n_lung >= min_pixels) & (std_lung > 0)
        return np.where(valid, ratio, np.nan)

    return _map_chunks(hu, cnr, chunk_size, name="hu")


def compute_quality_table(
    images: np.ndarray,
    hu: np.ndarray | None = None,
    has_hu: np.ndarray | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> pd.DataFrame:
    """Compute every quality metric for a batch, one row per slice.

    Each chunk of slices is read once and all metrics are computed from it,
    with the default arguments of the single-metric functions.

    Args:
        images: Batch (N, H, W) with intensities in [0, 1].
        hu: Batch (N, H, W) of Hounsfield units for the same slices, or None,
            which makes ``lung_soft_tissue_cnr`` NaN everywhere.
        has_hu: Boolean (N,): False marks slices whose HU are placeholders,
            and their CNR is NaN. None means every slice in ``hu`` is real.
        chunk_size: Maximum slices read into memory at once.

    Returns:
        DataFrame with N rows in input order and the columns of
        ``METRIC_NAMES``, all float64.

    Raises:
        ValueError: ``images`` or ``hu`` is not 3D, ``hu`` has another shape
            than ``images``, ``has_hu`` has another length, or ``chunk_size``
            is below 1.
    """
    images = _check_batch(images)
    n_slices = len(images)
    if hu is not None:
        hu = _check_batch(hu, "hu")
        if hu.shape != images.shape:
            raise ValueError(f"hu has shape {hu.shape} but images has {images.shape}; pass HU of the same slices")
    if has_hu is not None:
        has_hu = np.asarray(has_hu, dtype=bool)
        if has_hu.shape != (n_slices,):
            raise ValueError(f"has_hu has shape {has_hu.shape}; expected ({n_slices},), one flag per slice")

    columns = {name: np.full(n_slices, np.nan) for name in METRIC_NAMES}
    for rows, chunk in _iter_chunks(images, chunk_size):
        columns["noise_sigma"][rows] = _noise_sigma_chunk(chunk)
        flat = _flat(chunk)
        columns["rms_contrast"][rows] = flat.std(axis=1, dtype=np.float64)
        columns["mean_exposure"][rows] = flat.mean(axis=1, dtype=np.float64)
        columns["underexposed_fraction"][rows] = (flat < UNDEREXPOSED_THRESHOLD).mean(axis=1)
        columns["overexposed_fraction"][rows] = (flat > OVEREXPOSED_THRESHOLD).mean(axis=1)
        low, high = np.percentile(flat, DYNAMIC_RANGE_PERCENTILES, axis=1)
        columns["dynamic_range"][rows] = high - low
        columns["laplacian_variance"][rows] = _laplacian_variance_chunk(chunk)
        columns["haze_score"][rows] = _haze_score_chunk(chunk, HAZE_WINDOW_PX)

    if hu is not None:
        cnr = lung_soft_tissue_cnr(hu, chunk_size=chunk_size)
        if has_hu is not None:
            cnr[~has_hu] = np.nan
        columns["lung_soft_tissue_cnr"] = cnr
    return pd.DataFrame(columns)
