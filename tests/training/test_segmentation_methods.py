"""Tests of the segmentation methods: Mean Teacher, multi-task, architectures, encoder transfer, checkpoints."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from monai.networks.nets import UNet
from omegaconf import OmegaConf

from lungct_kedro.datasets.slice_store import SliceStore
from lungct_kedro.models.encoders import build_resnet18_encoder
from lungct_kedro.models.multitask import MultiTaskSegmenter
from lungct_kedro.models.segmentation import build_segmentation_model, check_image_size
from lungct_kedro.pipelines.segmentation.nodes import train_segmentation_model
from lungct_kedro.training.mean_teacher import MeanTeacherPair, Perturbation, perturb, softmax_mse, unflip
from lungct_kedro.training.segmentation import (
    load_segmentation_model,
    predict_class_maps,
    segmentation_checkpoint,
    train_segmentation,
)
from lungct_kedro.training.segmentation_objective import (
    MeanTeacherSettings,
    SegmentationObjective,
    build_segmentation_criterion,
    class_cross_entropy,
)
from lungct_kedro.training.segmentation_params import validate_segmentation_params

CONF = Path(__file__).resolve().parents[2] / "conf" / "base"


def make_store(n_slices: int = 12, size: int = 32, seed: int = 0) -> SliceStore:
    rng = np.random.default_rng(seed)
    images = rng.random((n_slices, size, size)).astype(np.float16)
    masks = np.zeros((n_slices, size, size), dtype=np.uint8)
    masks[:, size // 4 : size // 2, size // 4 : size // 2] = 1
    masks[:, size // 2 : 3 * size // 4, size // 2 : 3 * size // 4] = 2
    return SliceStore(arrays={"image": images, "mask": masks})


def tiny_params(**changes) -> dict:
    params = {
        "target": "multiclass",
        "seed": 0,
        "device": "cpu",
        "method": "supervised",
        "model": {
            "architecture": "unet",
            "channels": [4, 8, 16],
            "num_res_units": 1,
            "dropout": 0.0,
            "swin_unetr": {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]},
            "dynunet": {"filters": [4, 8, 16, 32], "deep_supervision": True, "deep_supervision_levels": 2},
            "encoder_init": "random",
        },
        "training": {
            "iterations": 2, "batch_size": 2, "learning_rate": 0.01, "momentum": 0.9, "weight_decay": 0.0,
            "poly_power": 0.9, "dice_weight": 1.0, "ce_weight": 1.0, "validate_every": 2, "log_every": 1,
            "monitor": "val_dice_pooled", "cpu_time_budget_s": None,
        },
        "augmentation": {"rotate_degrees": 0.0, "flip_probability": 0.0},
        "mean_teacher": {
            "ema_decay": 0.9, "consistency_weight": 1.0, "rampup_iterations": 2, "unlabeled_batch_size": 2,
            "perturbation": {"noise_std": 0.05, "intensity_jitter": 0.1, "flip": True},
            "unlabeled_sources": None, "evaluate": "teacher",
        },
        "multitask": {
            "enabled": False, "label_column": "severity", "classes": ["ordinary", "severe", "critical"],
            "loss_weight": 0.3, "class_only_batch_size": 2,
        },
        "inference": {"flip_tta": False, "postprocess": {"lung_mask": False, "min_component_pixels": 0}},
        "evaluation": {"batch_size": 4, "overlay_slices": 2},
    }
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = params
        for key in parents:
            node = node[key]
        node[leaf] = value
    return params


def one_by_one_segmenter() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Conv2d(1, 3, kernel_size=1)


# ---------- Mean Teacher ----------


def test_teacher_update_arithmetic():
    pair = MeanTeacherPair(one_by_one_segmenter())
    with torch.no_grad():
        pair.teacher.weight.fill_(1.0)
        pair.teacher.bias.fill_(-2.0)
        pair.student.weight.fill_(3.0)
        pair.student.bias.fill_(2.0)
    settings = MeanTeacherSettings(ema_decay=0.9, consistency_weight=1.0, rampup_share=0.5, perturbation=Perturbation())
    objective = SegmentationObjective(build_segmentation_criterion(1.0, 1.0), torch.Generator(), mean_teacher=settings)
    batch = {"image": torch.rand(2, 1, 8, 8), "label": torch.zeros(2, 1, 8, 8, dtype=torch.int64)}
    objective(pair, batch)

    # Step 1: decay min(1 - 1/2, 0.9) = 0.5, so the teacher moves halfway.
    objective.after_step(1, 0.1)
    assert torch.allclose(pair.teacher.weight, torch.full_like(pair.teacher.weight, 2.0))
    assert torch.allclose(pair.teacher.bias, torch.zeros_like(pair.teacher.bias))
    # Step 20: decay min(1 - 1/21, 0.9) = 0.9: 0.9 * 2 + 0.1 * 3 = 2.1 and 0.9 * 0 + 0.1 * 2 = 0.2.
    objective.after_step(20, 0.2)
    assert torch.allclose(pair.teacher.weight, torch.full_like(pair.teacher.weight, 2.1))
    assert torch.allclose(pair.teacher.bias, torch.full_like(pair.teacher.bias, 0.2))
    assert torch.equal(pair.student.weight, torch.full_like(pair.student.weight, 3.0))


def test_consistency_zero_for_identical_predictions():
    logits = torch.randn(3, 3, 8, 8)
    assert softmax_mse(logits, logits.clone()).item() == 0.0
    assert softmax_mse(logits, logits + 5.0).item() == pytest.approx(0.0, abs=1e-7)  # softmax ignores a shift
    assert softmax_mse(logits, torch.randn(3, 3, 8, 8)).item() > 1e-3


def test_consistency_gradient_reaches_student_only():
    student = torch.randn(2, 3, 4, 4, requires_grad=True)
    teacher = torch.randn(2, 3, 4, 4, requires_grad=True)
    softmax_mse(student, teacher).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_perturbation_flips_are_undone():
    images = torch.rand(6, 1, 8, 8)
    plain = Perturbation(noise_std=0.0, intensity_jitter=0.0, flip=True)
    perturbed, flips = perturb(images, plain, torch.Generator().manual_seed(3))
    assert flips.any()
    assert not flips.all()
    assert not torch.equal(perturbed, images)
    assert torch.equal(unflip(perturbed, flips), images)


def test_perturbation_noise_and_jitter_change_intensities():
    images = torch.full((4, 1, 16, 16), 0.5)
    noisy, _ = perturb(images, Perturbation(noise_std=0.05, intensity_jitter=0.0, flip=False), torch.Generator())
    assert 0.03 < float((noisy - images).std()) < 0.07
    jittered, _ = perturb(images, Perturbation(noise_std=0.0, intensity_jitter=0.1, flip=False), torch.Generator())
    per_slice = jittered.flatten(1)
    assert torch.allclose(per_slice.std(dim=1), torch.zeros(4), atol=1e-6)  # one factor and shift per slice
    assert float((per_slice[:, 0] - 0.5).abs().max()) <= 0.5 * 0.1 + 0.1 + 1e-6
    assert len(torch.unique(per_slice[:, 0])) == 4


def test_consistency_weight_ramps_up():
    settings = MeanTeacherSettings(ema_decay=0.9, consistency_weight=2.0, rampup_share=0.4, perturbation=Perturbation())
    objective = SegmentationObjective(build_segmentation_criterion(1.0, 1.0), torch.Generator(), mean_teacher=settings)
    assert objective.consistency_weight() == pytest.approx(2.0 * math.exp(-5.0))
    objective.after_step(1, 0.2)
    assert objective.consistency_weight() == pytest.approx(2.0 * math.exp(-5.0 * 0.25))
    objective.after_step(2, 0.5)
    assert objective.consistency_weight() == pytest.approx(2.0)


# ---------- losses ----------


def test_segmentation_loss_weights():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    labels = torch.randint(0, 3, (2, 1, 8, 8))
    dice = DiceLoss(to_onehot_y=True, softmax=True)(logits, labels)
    cross_entropy = F.cross_entropy(logits, labels[:, 0])
    combined = build_segmentation_criterion(2.0, 0.5)(logits, labels)
    assert combined.item() == pytest.approx(2.0 * dice.item() + 0.5 * cross_entropy.item(), rel=1e-5)


def test_multitask_losses_combine_with_weights():
    torch.manual_seed(0)
    segmenter = UNet(spatial_dims=2, in_channels=1, out_channels=3, channels=(4, 8), strides=(2,), num_res_units=1)
    model = MultiTaskSegmenter(segmenter, {"architecture": "unet", "channels": [4, 8]}, n_classes=3)
    criterion = build_segmentation_criterion(1.0, 1.0)
    batch = {
        "image": torch.rand(2, 1, 16, 16),
        "label": torch.randint(0, 3, (2, 1, 16, 16)),
        "class_label": torch.tensor([2, -1]),
        "extra_image": torch.rand(2, 1, 16, 16),
        "extra_class_label": torch.tensor([0, -1]),
    }
    with torch.no_grad():
        segmentation, class_logits = model(torch.cat([batch["image"], batch["extra_image"]]), with_class=True)
        expected_segmentation = criterion(segmentation[:2], batch["label"])
        expected_classification = F.cross_entropy(class_logits[[0, 2]], torch.tensor([2, 0]))
    for weight in (0.0, 0.3, 2.0):
        objective = SegmentationObjective(criterion, torch.Generator(), class_weight=weight)
        with torch.no_grad():
            loss = objective(model, batch)
        assert loss.item() == pytest.approx(expected_segmentation.item() + weight * expected_classification.item(), rel=1e-5)
    means = objective.take_means()
    assert means["loss_classification"] == pytest.approx(expected_classification.item(), rel=1e-5)
    assert means["loss_segmentation"] == pytest.approx(expected_segmentation.item(), rel=1e-5)


def test_class_loss_without_classes_is_zero():
    logits = torch.randn(3, 3, requires_grad=True)
    loss = class_cross_entropy(logits, torch.tensor([-1, -1, -1]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros(3, 3))


# ---------- architectures ----------


def test_swin_unetr_forward_at_configured_size():
    image_size = int(OmegaConf.load(CONF / "parameters_ingestion.yml")["ingestion"]["image_size"])
    model_params = OmegaConf.to_container(OmegaConf.load(CONF / "parameters_segmentation.yml")["segmentation"]["model"])
    model_params["architecture"] = "swin_unetr"
    check_image_size(model_params, image_size)
    network = build_segmentation_model(model_params, out_channels=3).eval()
    with torch.no_grad():
        output = network(torch.rand(1, 1, image_size, image_size))
    assert output.shape == (1, 3, image_size, image_size)


def test_swin_unetr_rejects_size_not_multiple_of_32():
    with pytest.raises(ValueError, match="multiple of 32"):
        check_image_size({"architecture": "swin_unetr"}, 100)


def test_swin_unetr_rejects_too_small_slices():
    with pytest.raises(ValueError, match="at least 64 px"):
        check_image_size({"architecture": "swin_unetr"}, 32)


@pytest.mark.parametrize("architecture", ["unet", "swin_unetr", "dynunet", "flexible_unet_resnet18"])
def test_multitask_head_on_every_architecture(architecture):
    model_params = tiny_params()["model"]
    model_params["architecture"] = architecture
    model = MultiTaskSegmenter(build_segmentation_model(model_params, 3), model_params, n_classes=4).eval()
    with torch.no_grad():
        segmentation, class_logits = model(torch.rand(2, 1, 64, 64), with_class=True)
        plain = model(torch.rand(2, 1, 64, 64))
    assert segmentation.shape == (2, 3, 64, 64)
    assert class_logits.shape == (2, 4)
    assert plain.shape == (2, 3, 64, 64)


def test_dynunet_deep_supervision_heads_in_training_only():
    model_params = tiny_params()["model"]
    model_params["architecture"] = "dynunet"
    network = build_segmentation_model(model_params, 3)
    assert network.train()(torch.rand(2, 1, 32, 32)).shape == (2, 3, 3, 32, 32)
    assert network.eval()(torch.rand(2, 1, 32, 32)).shape == (2, 3, 32, 32)


# ---------- training and checkpoints ----------


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"method": "mean_teacher", "multitask__enabled": True},
        {"model__architecture": "dynunet"},
        {"model__architecture": "swin_unetr", "method": "mean_teacher"},
    ],
    ids=["unet", "unet-mean-teacher-multitask", "dynunet-deep-supervision", "swin-mean-teacher"],
)
def test_checkpoint_rebuilds_every_method(changes):
    size = 64 if changes.get("model__architecture") == "swin_unetr" else 32
    store = make_store(size=size)
    params = tiny_params(**changes)
    model, result = train_segmentation(
        store, [0, 1, 2, 3], [4, 5], params, unlabeled_indices=[6, 7, 8], class_targets={0: 1, 1: 0, 6: 2, 9: 1}
    )
    checkpoint = segmentation_checkpoint(model, result, params, store.image_size)
    assert checkpoint["method"] == params["method"]
    assert checkpoint["model"]["architecture"] == params["model"]["architecture"]
    rebuilt, device = load_segmentation_model(checkpoint, "cpu")
    expected = predict_class_maps(model, store, [10, 11], device, flip_tta=True)
    assert np.array_equal(predict_class_maps(rebuilt, store, [10, 11], device, flip_tta=True), expected)
    assert expected.dtype == np.uint8
    assert expected.shape == (2, size, size)


def test_mean_teacher_returns_teacher_and_logs_student():
    params = tiny_params(method="mean_teacher")
    model, result = train_segmentation(make_store(), [0, 1, 2, 3], [4, 5], params, unlabeled_indices=[6, 7])
    last = result.history[-1]
    assert "val_dice_student" in last
    assert last["loss_consistency"] >= 0.0
    assert not any(parameter.requires_grad for parameter in model.parameters())  # the teacher takes no gradient


def test_mean_teacher_reads_unlabeled_rows(monkeypatch):
    from lungct_kedro.training import segmentation as segmentation_training

    seen = []
    real_call = segmentation_training.SegmentationObjective.__call__

    def spy(self, model, batch):
        seen.append(batch["extra_image"][:, 0, 0, 0].clone())
        return real_call(self, model, batch)

    monkeypatch.setattr(segmentation_training.SegmentationObjective, "__call__", spy)
    store = make_store()
    store.arrays["image"][6] = 0.25
    store.arrays["image"][7] = 0.75
    params = tiny_params(method="mean_teacher", training__iterations=3)
    train_segmentation(store, [0, 1, 2, 3], [], params, unlabeled_indices=[6, 7])
    assert len(seen) == 3
    assert sorted(torch.cat(seen).unique().tolist()) == [0.25, 0.75]


def test_multitask_needs_class_targets():
    with pytest.raises(ValueError, match="class target"):
        train_segmentation(make_store(), [0, 1], [], tiny_params(multitask__enabled=True), class_targets={})


def test_cpu_time_budget_stops_training():
    params = tiny_params(training__iterations=100_000, training__cpu_time_budget_s=0.5)
    _, result = train_segmentation(make_store(), [0, 1, 2, 3], [4], params)
    assert result.stopped_by == "cpu_time_budget"
    assert 0 < result.iterations_run < 100_000
    assert result.cpu_seconds >= 0.5
    assert result.history[-1]["iteration"] == result.iterations_run
    assert result.history[-1]["learning_rate"] == pytest.approx(0.0, abs=1e-12)


def test_pretrained_encoder_weights_loaded_by_node():
    source = build_resnet18_encoder(1).state_dict()
    store = make_store(n_slices=6, size=32)
    slices = {
        "slice_id": [f"s{i}" for i in range(6)],
        "store_index": list(range(6)),
        "split": ["train", "train", "train", "val", "test", "test"],
    }
    import pandas as pd

    params = tiny_params(
        model__architecture="flexible_unet_resnet18",
        model__encoder_init="pretrained",
        training__iterations=1,
        training__learning_rate=0.0,
    )
    auxiliary = pd.DataFrame(
        {"slice_id": [], "store_index": [], "source": [], "has_mask": [], "unlabeled": [], "class_label": [], "class_index": []}
    ).astype({"store_index": "int64", "unlabeled": bool, "class_index": "int64"})
    checkpoint, history, _ = train_segmentation_model(
        store, pd.DataFrame(slices), auxiliary, {"state_dict": source, "method": "simsiam"}, params
    )
    state = checkpoint["state_dict"]
    compared = [key for key in source if key.endswith("weight") and "bn" not in key and ".downsample." not in key]
    assert len(compared) >= 10
    for key in compared:
        assert torch.equal(state[f"encoder.{key}"], source[key]), key
    random_start = build_segmentation_model({"architecture": "flexible_unet_resnet18"}, 3).state_dict()
    assert not torch.equal(random_start["encoder.conv1.weight"], state["encoder.conv1.weight"])
    assert len(history) == 1


def test_pretrained_encoder_missing_names_pretraining_pipeline():
    import pandas as pd

    params = tiny_params(model__architecture="flexible_unet_resnet18", model__encoder_init="pretrained")
    slices = pd.DataFrame({"slice_id": ["a", "b"], "store_index": [0, 1], "split": ["train", "val"]})
    auxiliary = pd.DataFrame({"slice_id": [], "store_index": [], "unlabeled": [], "class_index": []})
    with pytest.raises(ValueError, match="kedro run --pipeline=pretraining"):
        train_segmentation_model(make_store(), slices, auxiliary, None, params)


# ---------- parameters ----------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"model": {"architecure": "unet"}}, "segmentation.model.architecure"),
        ({"mean_teacher": {"perturbation": {"noise": 0.1}}}, "segmentation.mean_teacher.perturbation.noise"),
        ({"inference": {"postprocess": {"lung_masks": True}}}, "segmentation.inference.postprocess.lung_masks"),
        ({"methods": "supervised"}, "segmentation.methods"),
        ({"method": "fixmatch"}, "segmentation.method"),
        ({"model": {"architecture": "unet", "encoder_init": "pretrained"}}, "flexible_unet_resnet18"),
        ({"training": {"cpu_time_budget_s": 0}}, "cpu_time_budget_s"),
        ({"multitask": {"enabled": True, "classes": ["one"]}}, "at least two classes"),
        ({"inference": {"flip_tta": "maybe"}}, "segmentation.inference.flip_tta must be true or false"),
        ({"inference": {"postprocess": {"lung_mask": "perhaps"}}}, "segmentation.inference.postprocess.lung_mask"),
    ],
)
def test_invalid_parameters_named(params, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        validate_segmentation_params(params)


def test_base_parameters_valid():
    params = OmegaConf.to_container(OmegaConf.load(CONF / "parameters_segmentation.yml")["segmentation"])
    validate_segmentation_params(params)
    assert params["method"] == "supervised"
    assert params["model"]["architecture"] == "unet"
    assert params["multitask"]["enabled"] is False
    assert copy.deepcopy(params["inference"]) == {
        "flip_tta": False,
        "postprocess": {"lung_mask": False, "min_component_pixels": 0},
    }
