"""Quality metrics on constructed slices whose values are known by construction."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from lungct_kedro.imaging import quality

SIZE = 128


def smooth_slice() -> np.ndarray:
    """Return a smooth 128 x 128 slice in [0.2, 0.8] with no fine detail."""
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    return 0.5 + 0.3 * np.sin(2.0 * np.pi * x) * np.cos(np.pi * y)


def chest_like_slice() -> np.ndarray:
    """Return a black background, a bright body disk and two dark lung ellipses."""
    y, x = np.mgrid[0:SIZE, 0:SIZE] - SIZE / 2
    image = np.zeros((SIZE, SIZE))
    image[x**2 + y**2 < 55**2] = 0.85
    for centre in (-22, 22):
        image[((x - centre) / 15) ** 2 + (y / 30) ** 2 < 1] = 0.1
    return image


@pytest.mark.parametrize("sigma", [0.005, 0.02, 0.05, 0.1])
def test_noise_sigma_recovers_gaussian_sigma(sigma):
    rng = np.random.default_rng(7)
    batch = smooth_slice()[None] + rng.normal(0.0, sigma, size=(4, SIZE, SIZE))

    estimate = quality.noise_sigma(batch)

    assert estimate.shape == (4,)
    assert estimate.dtype == np.float64
    assert np.all(np.abs(estimate - sigma) < 0.1 * sigma)


def test_noise_sigma_ignores_flat_padding():
    # Two thirds of the slice is constant padding, as around a reconstructed
    # field of view; a plain median over all coefficients would return 0.
    rng = np.random.default_rng(4)
    image = np.full((1, SIZE, SIZE), 0.2)
    image[0, :, 86:] = smooth_slice()[:, 86:] + rng.normal(0.0, 0.03, size=(SIZE, SIZE - 86))

    assert quality.noise_sigma(image)[0] == pytest.approx(0.03, rel=0.1)


def test_noise_sigma_near_zero_on_smooth_slice():
    assert quality.noise_sigma(smooth_slice()[None])[0] < 1e-3


def test_constant_slice_has_no_contrast():
    batch = np.full((2, 32, 32), 0.4)

    assert np.all(quality.rms_contrast(batch) == 0.0)
    assert np.all(quality.laplacian_variance(batch) == 0.0)
    assert np.all(quality.noise_sigma(batch) == 0.0)
    assert np.all(quality.dynamic_range(batch) == 0.0)
    assert np.allclose(quality.mean_exposure(batch), 0.4)


def test_half_black_half_white_fractions():
    image = np.zeros((1, 40, 40))
    image[:, :, 20:] = 1.0

    assert quality.underexposed_fraction(image)[0] == pytest.approx(0.5)
    assert quality.overexposed_fraction(image)[0] == pytest.approx(0.5)
    assert quality.dynamic_range(image)[0] == pytest.approx(1.0)
    assert quality.mean_exposure(image)[0] == pytest.approx(0.5)
    assert quality.rms_contrast(image)[0] == pytest.approx(0.5)


def test_exposure_thresholds_are_strict():
    image = np.array([[[0.02, 0.98], [0.01, 0.99]]])

    assert quality.underexposed_fraction(image)[0] == pytest.approx(0.25)
    assert quality.overexposed_fraction(image)[0] == pytest.approx(0.25)
    assert quality.underexposed_fraction(image, threshold=0.5)[0] == pytest.approx(0.5)


def test_blur_lowers_laplacian_variance():
    rng = np.random.default_rng(3)
    sharp = rng.uniform(0.0, 1.0, size=(1, SIZE, SIZE))
    blurred = ndimage.gaussian_filter(sharp, sigma=(0, 1.5, 1.5))

    assert quality.laplacian_variance(blurred)[0] < 0.1 * quality.laplacian_variance(sharp)[0]


def test_laplacian_variance_hand_computed():
    # A single bright pixel in the middle of a 5 x 5 slice: the interior 3 x 3
    # Laplacian is -4 at the centre and 1 at its four neighbours, 0 elsewhere.
    image = np.zeros((1, 5, 5))
    image[0, 2, 2] = 1.0
    values = np.array([-4.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])

    assert quality.laplacian_variance(image)[0] == pytest.approx(values.var())


@pytest.mark.parametrize("airlight", [0.5, 0.9])
def test_haze_raises_haze_score(airlight):
    clean = chest_like_slice()
    transmissions = [1.0, 0.8, 0.5, 0.3]
    batch = np.stack([clean * t + airlight * (1.0 - t) for t in transmissions])

    scores = quality.haze_score(batch)

    assert np.all(np.diff(scores) > 0)
    assert np.all((scores >= 0.0) & (scores <= 1.0))


def test_haze_score_ignores_moderate_noise():
    clean = chest_like_slice()
    noisy = clean + np.random.default_rng(1).normal(0.0, 0.03, size=clean.shape)
    hazy = clean * 0.6 + 0.9 * 0.4

    scores = quality.haze_score(np.stack([clean, noisy, hazy]))

    assert abs(scores[1] - scores[0]) < 0.05
    assert scores[2] - scores[0] > 0.2


def test_cnr_hand_computed():
    hu = np.full((1, 20, 20), -1024, dtype=np.int16)
    hu[0, :5, :] = 40  # 100 soft-tissue pixels, mean 40 HU
    hu[0, 10:15, 0::2] = -850  # 100 lung pixels alternating -850 and -750 HU:
    hu[0, 10:15, 1::2] = -750  # mean -800 HU, population std 50 HU
    hu[0, 15:20, :] = -1024  # air outside both ranges

    expected = (40 - (-800)) / 50.0

    assert quality.lung_soft_tissue_cnr(hu)[0] == pytest.approx(expected)


def test_cnr_region_boundaries_included():
    hu = np.zeros((1, 10, 20))
    hu[0, :5, :10] = -100.0
    hu[0, :5, 10:] = 100.0
    hu[0, 5:, :10] = -950.0
    hu[0, 5:, 10:] = -700.0

    expected = abs(0.0 - (-825.0)) / 125.0

    assert quality.lung_soft_tissue_cnr(hu)[0] == pytest.approx(expected)


def test_cnr_nan_without_regions():
    no_hu = np.full((1, 20, 20), -1024, dtype=np.int16)
    few_lung = np.full((1, 20, 20), 40, dtype=np.int16)
    few_lung[0, 0, 0:10:2] = -800
    few_lung[0, 0, 1:10:2] = -750
    uniform_lung = np.full((1, 20, 20), -800, dtype=np.int16)
    uniform_lung[0, :10] = 0

    assert np.isnan(quality.lung_soft_tissue_cnr(no_hu)[0])
    assert np.isnan(quality.lung_soft_tissue_cnr(few_lung)[0])
    assert np.isnan(quality.lung_soft_tissue_cnr(uniform_lung)[0])
    assert not np.isnan(quality.lung_soft_tissue_cnr(few_lung, min_pixels=5)[0])


def test_quality_table_matches_single_metrics():
    rng = np.random.default_rng(5)
    images = np.clip(chest_like_slice()[None] + rng.normal(0, 0.05, size=(5, SIZE, SIZE)), 0, 1).astype(np.float16)
    hu = np.where(images > 0.5, 40, -800).astype(np.int16) + rng.integers(-30, 30, size=images.shape).astype(np.int16)
    has_hu = np.array([True, True, False, True, False])

    table = quality.compute_quality_table(images, hu=hu, has_hu=has_hu, chunk_size=2)

    assert list(table.columns) == list(quality.METRIC_NAMES)
    assert len(table) == 5
    for name in quality.METRIC_NAMES[:-1]:
        assert np.allclose(table[name], getattr(quality, name)(images)), name
    cnr = quality.lung_soft_tissue_cnr(hu)
    assert np.allclose(table["lung_soft_tissue_cnr"][has_hu], cnr[has_hu])
    assert table["lung_soft_tissue_cnr"][~has_hu].isna().all()


def test_quality_table_without_hu_has_nan_cnr():
    table = quality.compute_quality_table(np.zeros((3, 16, 16)))

    assert table["lung_soft_tissue_cnr"].isna().all()
    assert table["noise_sigma"].notna().all()


def test_chunk_size_does_not_change_results():
    rng = np.random.default_rng(9)
    images = rng.uniform(0, 1, size=(7, 32, 32))

    whole = quality.compute_quality_table(images, chunk_size=256)
    one_by_one = quality.compute_quality_table(images, chunk_size=1)

    assert np.allclose(whole.to_numpy(), one_by_one.to_numpy(), equal_nan=True)


def test_memory_mapped_float16_input(tmp_path):
    path = tmp_path / "images.npy"
    np.save(path, np.random.default_rng(2).uniform(0, 1, size=(4, 16, 16)).astype(np.float16))
    images = np.load(path, mmap_mode="r")

    assert quality.rms_contrast(images).shape == (4,)
    assert np.isfinite(quality.haze_score(images)).all()


def test_metrics_reject_invalid_input():
    with pytest.raises(ValueError, match="shape"):
        quality.noise_sigma(np.zeros((16, 16)))
    with pytest.raises(ValueError, match="percentiles"):
        quality.dynamic_range(np.zeros((1, 8, 8)), low_percentile=90, high_percentile=10)
    with pytest.raises(ValueError, match="chunk_size"):
        quality.rms_contrast(np.zeros((1, 8, 8)), chunk_size=0)
    with pytest.raises(ValueError, match="window"):
        quality.haze_score(np.zeros((1, 8, 8)), window=0)
    with pytest.raises(ValueError, match="hu has shape"):
        quality.compute_quality_table(np.zeros((2, 8, 8)), hu=np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="has_hu"):
        quality.compute_quality_table(np.zeros((2, 8, 8)), hu=np.zeros((2, 8, 8)), has_hu=[True])
