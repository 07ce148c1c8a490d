"""Self-supervised losses, collapse watch, CT view augmentation and encoder weight transfer."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from lungct_kedro.models.classification import build_classifier, load_encoder_state
from lungct_kedro.models.encoders import build_resnet18_encoder
from lungct_kedro.models.segmentation import build_flexible_unet_resnet18, load_resnet18_encoder_into_flexible_unet
from lungct_kedro.models.ssl import (
    BYOL,
    build_ssl_model,
    byol_loss,
    ema_update,
    embedding_std,
    mask_pooled_features,
    nt_xent_loss,
    region_agreement_loss,
    resnet_feature_map,
    simsiam_loss,
)
from lungct_kedro.training.pretraining import ViewAugmentation, augment_view, check_collapse

SSL_PARAMS = {
    "in_channels": 1,
    "projector": {"hidden_dim": 32, "out_dim": 16, "layers": 2},
    "predictor": {"hidden_dim": 8},
    "byol": {"base_decay": 0.9},
    "simclr": {"temperature": 0.5},
}


def test_simsiam_loss_aligned_is_minus_one():
    z = torch.randn(8, 16)
    assert simsiam_loss(2 * z, 3 * z, z, z).item() == pytest.approx(-1.0, abs=1e-6)


def test_simsiam_loss_opposite_is_plus_one():
    z = torch.randn(8, 16)
    assert simsiam_loss(-z, -z, z, z).item() == pytest.approx(1.0, abs=1e-6)


def test_simsiam_loss_stops_target_gradient():
    p = torch.randn(4, 8, requires_grad=True)
    z = torch.randn(4, 8, requires_grad=True)
    simsiam_loss(p, p, z, z).backward()
    assert p.grad is not None
    assert z.grad is None


def test_byol_loss_values():
    z = torch.randn(5, 8)
    assert byol_loss(z, 4 * z).item() == pytest.approx(0.0, abs=1e-6)
    assert byol_loss(z, -z).item() == pytest.approx(4.0, abs=1e-6)
    orthogonal = byol_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]))
    assert orthogonal.item() == pytest.approx(2.0)


def test_nt_xent_matched_below_shuffled():
    generator = torch.Generator().manual_seed(0)
    z1 = torch.randn(16, 32, generator=generator)
    z2 = z1 + 0.05 * torch.randn(16, 32, generator=generator)
    matched = nt_xent_loss(z1, z2, temperature=0.1)
    shuffled = nt_xent_loss(z1, z2[torch.randperm(16, generator=generator)], temperature=0.1)
    assert matched.item() < shuffled.item()


def test_nt_xent_uniform_similarity_is_log_candidates():
    # All views identical: every one of the 2n - 1 candidates is equally likely.
    z = torch.ones(4, 3)
    assert nt_xent_loss(z, z, temperature=1.0).item() == pytest.approx(math.log(7), abs=1e-5)


def test_nt_xent_rejects_bad_temperature():
    with pytest.raises(ValueError, match="temperature"):
        nt_xent_loss(torch.ones(2, 3), torch.ones(2, 3), temperature=0.0)


def test_ema_update_arithmetic():
    target, online = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        target.weight.fill_(1.0)
        online.weight.fill_(3.0)
    ema_update(target, online, decay=0.75)
    # 0.75 * 1 + 0.25 * 3 = 1.5
    assert torch.allclose(target.weight, torch.full((1, 2), 1.5))
    assert torch.allclose(online.weight, torch.full((1, 2), 3.0))


def test_byol_target_follows_online_after_step():
    model = build_ssl_model({**SSL_PARAMS, "method": "byol"})
    assert isinstance(model, BYOL)
    before = model.target_projector[0].weight.detach().clone()
    with torch.no_grad():
        model.projector[0].weight.add_(1.0)
    decay = model.target_decay(0, 10)
    assert decay == pytest.approx(0.9)
    model.after_step(0, 10)
    expected = decay * before + (1 - decay) * model.projector[0].weight.detach()
    assert torch.allclose(model.target_projector[0].weight, expected, atol=1e-6)
    assert model.target_decay(10, 10) == pytest.approx(1.0)


def test_target_network_takes_no_gradient():
    model = build_ssl_model({**SSL_PARAMS, "method": "byol"})
    assert not any(p.requires_grad for p in model.target_encoder.parameters())


@pytest.mark.parametrize("method", ["simsiam", "byol", "simclr"])
def test_ssl_model_loss_is_finite_and_backpropagates(method):
    torch.manual_seed(0)
    model = build_ssl_model({**SSL_PARAMS, "method": method})
    view1, view2 = torch.rand(4, 1, 32, 32), torch.rand(4, 1, 32, 32)
    features1 = resnet_feature_map(model.encoder, view1).mean(dim=(2, 3))
    features2 = resnet_feature_map(model.encoder, view2).mean(dim=(2, 3))
    loss = model.pair_loss(view1, view2, features1, features2)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.encoder.conv1.weight.grad is not None


def test_feature_map_pooling_equals_encoder_output():
    encoder = build_resnet18_encoder(1).eval()
    images = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        pooled = resnet_feature_map(encoder, images).mean(dim=(2, 3))
        assert torch.allclose(pooled, encoder(images), atol=1e-5)


def test_embedding_std_constant_is_zero():
    assert embedding_std(torch.ones(64, 128)) == pytest.approx(0.0, abs=1e-6)


def test_embedding_std_gaussian_near_inverse_sqrt_dim():
    generator = torch.Generator().manual_seed(0)
    value = embedding_std(torch.randn(512, 128, generator=generator))
    assert value == pytest.approx(1 / math.sqrt(128), rel=0.05)


def test_check_collapse_warns_on_constant(caplog):
    with caplog.at_level(logging.WARNING):
        collapsed = check_collapse(embedding_std(torch.ones(64, 128)), 128, 0.2, iteration=5)
    assert collapsed
    assert "collapse" in caplog.text


def test_check_collapse_silent_on_gaussian(caplog):
    with caplog.at_level(logging.WARNING):
        collapsed = check_collapse(embedding_std(torch.randn(256, 128)), 128, 0.2)
    assert not collapsed
    assert caplog.text == ""


def test_augment_view_keeps_shape_and_range():
    generator = torch.Generator().manual_seed(0)
    settings = ViewAugmentation(output_size=48)
    images = torch.rand(6, 1, 64, 64)
    masks = (torch.rand(6, 1, 64, 64) > 0.7).long() * 2
    views, moved = augment_view(images, settings, generator, masks)
    assert views.shape == (6, 1, 48, 48)
    assert moved.shape == (6, 1, 48, 48)
    assert float(views.min()) >= 0.0
    assert float(views.max()) <= 1.0
    assert set(moved.unique().tolist()) <= {0, 2}


def test_augment_view_two_views_differ():
    generator = torch.Generator().manual_seed(0)
    settings = ViewAugmentation(output_size=32)
    images = torch.rand(4, 1, 32, 32)
    first, _ = augment_view(images, settings, generator)
    second, _ = augment_view(images, settings, generator)
    assert not torch.allclose(first, second)


def test_augment_view_identity_settings_keep_image():
    settings = ViewAugmentation(
        output_size=16, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_probability=0.0, rotate_degrees=0.0,
        level_jitter=0.0, width_jitter=0.0, noise_std=0.0, blur_probability=0.0,
    )
    images = torch.rand(2, 1, 16, 16)
    views, _ = augment_view(images, settings, torch.Generator().manual_seed(0))
    assert torch.allclose(views, images, atol=1e-5)


def test_window_jitter_is_affine_intensity_map():
    settings = ViewAugmentation(
        output_size=8, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_probability=0.0, rotate_degrees=0.0,
        level_jitter=0.2, width_jitter=0.5, noise_std=0.0, blur_probability=0.0,
    )
    ramp = torch.linspace(0.3, 0.7, 64).view(1, 1, 8, 8)
    views, _ = augment_view(ramp, settings, torch.Generator().manual_seed(3))
    inside = (views > 0.01) & (views < 0.99)
    fit = np.polyfit(ramp[inside].numpy(), views[inside].numpy(), 1)
    residual = views[inside].numpy() - np.polyval(fit, ramp[inside].numpy())
    assert np.abs(residual).max() < 1e-4


def test_mask_pooled_features_average_region():
    feature_map = torch.zeros(2, 3, 4, 4)
    feature_map[:, :, :2, :2] = 5.0
    masks = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    masks[0, :, :4, :4] = 1
    pooled, valid = mask_pooled_features(feature_map, masks)
    assert torch.allclose(pooled[0], torch.full((3,), 5.0))
    assert valid.tolist() == [True, False]


def test_region_agreement_without_lesions_is_zero():
    pooled = torch.randn(3, 4, requires_grad=True)
    loss = region_agreement_loss(pooled, pooled, torch.zeros(3, dtype=torch.bool))
    assert loss.item() == 0.0
    assert region_agreement_loss(pooled, 2 * pooled, torch.ones(3, dtype=torch.bool)).item() == pytest.approx(-1.0)


def test_classifier_encoder_loads_pretrained_weights():
    torch.manual_seed(0)
    source = build_resnet18_encoder(1).state_dict()
    classifier = build_classifier({"architecture": "resnet18"}, 3, 64, 1)
    before = classifier.encoder.conv1.weight.detach().clone()
    n_loaded = load_encoder_state(classifier, source)
    assert n_loaded == len(source)
    assert not torch.equal(before, classifier.encoder.conv1.weight)
    for key, value in classifier.encoder.state_dict().items():
        assert torch.equal(value, source[key]), key


def test_classifier_encoder_rejects_mismatched_weights():
    classifier = build_classifier({"architecture": "resnet18"}, 2, 64, 1)
    with pytest.raises(ValueError, match="do not fit"):
        load_encoder_state(classifier, build_resnet18_encoder(3).state_dict())


def test_flexible_unet_encoder_loads_pretrained_weights():
    torch.manual_seed(0)
    source = build_resnet18_encoder(1).state_dict()
    unet = build_flexible_unet_resnet18(3)
    before = unet.encoder.conv1.weight.detach().clone()
    report = load_resnet18_encoder_into_flexible_unet(unet, source)
    # MONAI 1.6 FlexibleUNet ResNet-18 has no downsample convolutions: 3 blocks x 6 tensors stay unmatched.
    assert report["loaded"] == len(source) - 18
    assert all(".downsample." in key for key in report["skipped"])
    assert report["shape_mismatch"] == []
    assert report["not_initialised"] == []
    assert not torch.equal(before, unet.encoder.conv1.weight)
    target = unet.encoder.state_dict()
    for key in set(source) - set(report["skipped"]):
        assert torch.equal(target[key], source[key]), key
    assert unet(torch.rand(1, 1, 64, 64)).shape == (1, 3, 64, 64)


def test_segmentation_training_starts_from_encoder(monkeypatch):
    from lungct_kedro.datasets.slice_store import SliceStore
    from lungct_kedro.training import segmentation as segmentation_training

    source = build_resnet18_encoder(1).state_dict()
    captured = {}
    real_load = segmentation_training.load_resnet18_encoder_into_flexible_unet

    def spy(model, state):
        report = real_load(model, state)
        captured["conv1"] = model.encoder.conv1.weight.detach().clone()
        return report

    monkeypatch.setattr(segmentation_training, "load_resnet18_encoder_into_flexible_unet", spy)
    rng = np.random.default_rng(0)
    store = SliceStore(
        arrays={
            "image": rng.random((4, 32, 32)).astype(np.float16),
            "mask": rng.integers(0, 3, (4, 32, 32)).astype(np.uint8),
        }
    )
    params = {
        "target": "multiclass",
        "seed": 0,
        "device": "cpu",
        "model": {"architecture": "flexible_unet_resnet18"},
        "training": {
            "iterations": 1, "batch_size": 2, "learning_rate": 0.01, "momentum": 0.9, "weight_decay": 0.0,
            "poly_power": 0.9, "dice_weight": 1.0, "ce_weight": 1.0, "validate_every": 1, "log_every": 1,
            "monitor": "val_dice_pooled",
        },
        "augmentation": {"rotate_degrees": 0, "flip_probability": 0.0},
    }
    segmentation_training.train_segmentation(store, [0, 1], [2], params, init_encoder_state=source)
    assert torch.equal(captured["conv1"], source["conv1.weight"])


def test_encoder_init_needs_flexible_unet():
    from lungct_kedro.datasets.slice_store import SliceStore
    from lungct_kedro.training.segmentation import train_segmentation

    store = SliceStore(arrays={"image": np.zeros((2, 16, 16), np.float16), "mask": np.zeros((2, 16, 16), np.uint8)})
    params = {"target": "multiclass", "seed": 0, "device": "cpu", "model": {"architecture": "unet", "channels": [4, 8]},
              "training": {"batch_size": 2}, "augmentation": {"rotate_degrees": 0, "flip_probability": 0.0}}
    with pytest.raises(ValueError, match="flexible_unet_resnet18"):
        train_segmentation(store, [0], [1], params, init_encoder_state=build_resnet18_encoder(1).state_dict())
