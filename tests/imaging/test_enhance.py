"""Tests of the classical enhancement chain."""

from __future__ import annotations

import numpy as np
import pytest

from lungct_kedro.imaging.enhance import enhance_image


def smooth_slice(size: int = 64) -> np.ndarray:
    rows, cols = np.mgrid[0:size, 0:size] / size
    return (0.3 + 0.4 * np.sin(np.pi * rows) * np.cos(np.pi * cols / 2)).astype(np.float32)


def test_nl_means_reduces_noise():
    clean = smooth_slice()
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 0.05, clean.shape), 0, 1)
    denoised = enhance_image(noisy, [{"name": "nl_means", "strength": 0.8}])
    assert np.abs(denoised - clean).mean() < 0.6 * np.abs(noisy - clean).mean()


def test_exposure_stretches_to_full_range():
    faded = 0.4 + 0.2 * smooth_slice()
    stretched = enhance_image(faded, [{"name": "exposure", "low_percentile": 0, "high_percentile": 100}])
    assert stretched.min() == pytest.approx(0.0, abs=1e-6)
    assert stretched.max() == pytest.approx(1.0, abs=1e-6)


def test_clahe_raises_local_contrast():
    faded = 0.45 + 0.1 * smooth_slice()
    enhanced = enhance_image(faded, [{"name": "clahe", "clip_limit": 0.02}])
    assert enhanced.std() > 2 * faded.std()


def test_gamma_below_one_brightens():
    image = smooth_slice()
    assert enhance_image(image, [{"name": "gamma", "gamma": 0.5}]).mean() > image.mean()


def test_output_stays_in_unit_range():
    image = smooth_slice()
    result = enhance_image(image, [{"name": "gamma", "gamma": 0.2}, {"name": "clahe"}, {"name": "exposure"}])
    assert result.dtype == np.float32
    assert result.min() >= 0.0
    assert result.max() <= 1.0


def test_no_steps_returns_clipped_copy():
    image = smooth_slice() * 2
    assert np.array_equal(enhance_image(image, []), np.clip(image, 0, 1))


@pytest.mark.parametrize(("steps", "message"), [([{"name": "sharpen"}], "unknown enhancement step"), ([{}], "unknown")])
def test_unknown_step_rejected(steps, message):
    with pytest.raises(ValueError, match=message):
        enhance_image(smooth_slice(), steps)


def test_non_2d_input_rejected():
    with pytest.raises(ValueError, match="2D"):
        enhance_image(np.zeros((2, 8, 8)), [])
