"""Tests of prediction options: flip test-time augmentation, lung mask and small-lesion removal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lungct_kedro.datasets.slice_store import SliceStore
from lungct_kedro.imaging.hu import apply_window, resize_image, resize_mask
from lungct_kedro.phantom.generator import render_phantom_patient
from lungct_kedro.phantom.params import DEFAULT as PHANTOM_DEFAULT
from lungct_kedro.training.postprocess import (
    derive_lung_mask,
    postprocess_class_maps,
    postprocess_options,
    remove_small_lesions,
)
from lungct_kedro.training.segmentation import predict_class_maps
from lungct_kedro.training.tta import FLIP_VIEWS, flip, predict_probabilities


def symmetric_conv() -> torch.nn.Module:
    """A 3x3 convolution whose kernels are mirror-symmetric on both axes, so its output flips with its input."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 3, kernel_size=3, padding=1)
    with torch.no_grad():
        kernel = conv.weight
        conv.weight.copy_(kernel + kernel.flip(-1) + kernel.flip(-2) + kernel.flip(-1, -2))
    return conv.eval()


class LeftBiased(torch.nn.Module):
    """Adds a left-to-right ramp to class 1, so its output does not flip with its input."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-2.0, 2.0, images.shape[-1]).expand_as(images[:, 0])
        return torch.stack([images[:, 0], images[:, 0] + ramp, -images[:, 0]], dim=1)


def test_flip_tta_equivariant_model_unchanged():
    model = symmetric_conv()
    images = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        flipped_back = flip(model(flip(images, (3,))), (3,))
        assert torch.allclose(flipped_back, model(images), atol=1e-5)  # the model is equivariant
    direct = predict_probabilities(model, images, flip_tta=False)
    augmented = predict_probabilities(model, images, flip_tta=True)
    assert torch.allclose(augmented, direct, atol=1e-6)


def test_flip_tta_averages_views_flipped_back():
    model = LeftBiased()
    images = torch.rand(2, 1, 8, 8)
    expected = sum(flip(torch.softmax(model(flip(images, dims)), dim=1), dims) for dims in FLIP_VIEWS) / 4
    not_flipped_back = sum(torch.softmax(model(flip(images, dims)), dim=1) for dims in FLIP_VIEWS) / 4
    augmented = predict_probabilities(model, images, flip_tta=True)
    assert torch.allclose(augmented, expected, atol=1e-6)
    assert not torch.allclose(augmented, not_flipped_back, atol=1e-3)
    assert torch.allclose(augmented.sum(dim=1), torch.ones(2, 8, 8), atol=1e-6)


def test_predict_class_maps_with_tta_and_postprocess():
    rng = np.random.default_rng(0)
    store = SliceStore(arrays={"image": rng.random((3, 16, 16)).astype(np.float16)})
    model = symmetric_conv()
    device = torch.device("cpu")
    plain = predict_class_maps(model, store, [0, 2], device)
    assert np.array_equal(predict_class_maps(model, store, [0, 2], device, flip_tta=True), plain)
    cleaned = predict_class_maps(model, store, [0, 2], device, postprocess={"min_component_pixels": 1000})
    assert plain.any()
    assert not cleaned.any()


def phantom_slice(patient: int, slice_index: int = 4):
    rendered = render_phantom_patient(PHANTOM_DEFAULT, 7, patient)
    image = apply_window(rendered.hu[slice_index], -600.0, 1500.0)
    return image, rendered.lung[slice_index], rendered.mask[slice_index] > 0, rendered.body[slice_index]


@pytest.mark.parametrize("patient", [0, 1, 2, 3, 4, 5])
def test_lung_mask_matches_phantom_lungs(patient):
    image, lung, lesion, body = phantom_slice(patient)
    mask = derive_lung_mask(image)
    assert (mask & lung).sum() / lung.sum() >= 0.95
    if lesion.any():
        assert (mask & lesion).sum() / lesion.sum() >= 0.95
    assert not (mask & ~body).any()
    assert (mask & lung).sum() / (mask | lung).sum() >= 0.55
    assert mask.sum() < 0.6 * body.sum()


def test_lung_mask_ignores_zero_padding():
    image, _, _, _ = phantom_slice(1)
    padded = np.pad(image, ((0, 0), (40, 40)), constant_values=0.0)
    mask = derive_lung_mask(padded)
    assert not mask[:, :40].any()
    assert np.array_equal(mask[:, 40:-40], derive_lung_mask(image))


def test_lung_mask_of_uniform_slice_keeps_everything():
    assert derive_lung_mask(np.full((32, 32), 0.4)).all()


def test_lung_mask_keeps_real_lesions(shared_data_dir):
    coverage, area = [], []
    for image_path in sorted((shared_data_dir / "segmentation" / "images").glob("*.jpg")):
        raw = np.asarray(Image.open(image_path).convert("L"), dtype=np.float32) / 255.0
        image = resize_image(raw, 128, 0.0)
        mask_path = shared_data_dir / "segmentation" / "masks_multiclass" / f"{image_path.stem}.png"
        lesion = resize_mask(np.asarray(Image.open(mask_path)), 128) > 0
        lung = derive_lung_mask(image)
        area.append(lung.mean())
        if lesion.any():
            coverage.append((lung & lesion).sum() / lesion.sum())
    assert len(coverage) >= 40
    assert np.median(coverage) >= 0.95
    assert np.mean(coverage) >= 0.85
    assert np.mean(np.array(area) < 0.95) >= 0.9  # the mask is found, not the all-True fallback


def test_small_lesion_components_removed():
    class_map = np.zeros((12, 12), dtype=np.uint8)
    class_map[0:2, 0:2] = 1  # 4 px
    class_map[5:8, 5:7] = 1  # 6 px joined diagonally to the next block: one 10 px lesion
    class_map[8:10, 7:9] = 2
    class_map[0, 11] = 2  # 1 px
    cleaned = remove_small_lesions(class_map, min_pixels=5)
    assert not cleaned[0:2, 0:2].any()
    assert cleaned[0, 11] == 0
    assert np.array_equal(cleaned[5:10, 5:9], class_map[5:10, 5:9])
    assert np.array_equal(remove_small_lesions(class_map, 0), class_map)


def test_postprocess_applies_lung_mask():
    image, lung, _, body = phantom_slice(0)
    predicted = np.ones((1, *image.shape), dtype=np.uint8)
    processed = postprocess_class_maps(predicted, image[None], {"lung_mask": True, "min_component_pixels": 0})
    assert np.array_equal(processed[0] > 0, derive_lung_mask(image))
    assert processed[0][lung].all()
    assert not processed[0][~body].any()


def test_postprocess_unknown_option_named():
    with pytest.raises(ValueError, match="segmentation.inference.postprocess.lungmask"):
        postprocess_options({"lungmask": True})
    with pytest.raises(ValueError, match="min_component_pixels"):
        postprocess_options({"min_component_pixels": -1})
