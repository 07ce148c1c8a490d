"""Label budgets, Mean Teacher updates, classification metrics and models, on hand-computed cases."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest
import torch

from lungct_kedro.datasets.slice_store import SliceStore
from lungct_kedro.models.classification import build_classifier
from lungct_kedro.models.encoders import build_resnet18_encoder
from lungct_kedro.pipelines.classification.nodes import select_classification_slices
from lungct_kedro.training.classification import (
    MeanTeacherPair,
    Preprocessing,
    allocate_budget,
    augment_for_training,
    crop_slices,
    draw_label_budget,
    normalisation_statistics,
    parse_budget,
    prepare_for_evaluation,
    sigmoid_rampup,
    train_classifier,
    unlabeled_pool,
    update_teacher,
)
from lungct_kedro.training.classification_metrics import classification_scores, confusion_matrix, mean_and_std

CLASSES = ["ordinary", "severe", "critical"]


def manifest_slices() -> pd.DataFrame:
    """30 train slices (10 per class), 6 unlabeled train slices, 6 val and 6 test slices."""
    rows = []
    for i in range(30):
        rows.append(("train", CLASSES[i % 3]))
    rows += [("train", None)] * 6
    rows += [("val", CLASSES[i % 3]) for i in range(6)]
    rows += [("test", CLASSES[i % 3]) for i in range(6)]
    return pd.DataFrame(
        {
            "slice_id": [f"s{i:03d}" for i in range(len(rows))],
            "store_index": range(len(rows)),
            "split": [split for split, _ in rows],
            "label": [label for _, label in rows],
        }
    )


# ---------- label budget ----------


@pytest.mark.parametrize(
    ("available", "budget", "expected"),
    [
        ({"a": 16, "b": 16, "c": 16}, {"total": 27}, {"a": 9, "b": 9, "c": 9}),
        # one each, then 4 spare slices shared 9 : 3 : 0 -> 3, 1, 0
        ({"a": 10, "b": 4, "c": 1}, {"total": 7}, {"a": 4, "b": 2, "c": 1}),
        # one each, then shares 2/3, 2/3, 2/3 -> the two largest remainders, ties to the earlier class
        ({"a": 3, "b": 3, "c": 3}, {"total": 5}, {"a": 2, "b": 2, "c": 1}),
        ({"a": 3, "b": 3, "c": 3}, {"total": 3}, {"a": 1, "b": 1, "c": 1}),
        ({"a": 5, "b": 2}, {"per_class": 2}, {"a": 2, "b": 2}),
        ({"a": 5, "b": 2}, {"total": None, "per_class": 2}, {"a": 2, "b": 2}),
    ],
)
def test_allocate_budget_counts(available, budget, expected):
    assert allocate_budget(available, budget) == expected


@pytest.mark.parametrize(
    ("available", "budget", "message"),
    [
        ({"a": 5, "b": 0}, {"total": 4}, "no labeled slice in the train split"),
        ({"a": 5, "b": 5, "c": 5}, {"total": 2}, "smaller than the 3 classes"),
        ({"a": 2, "b": 2}, {"total": 5}, "exceeds the 4 labeled train slices"),
        ({"a": 5, "b": 1}, {"per_class": 2}, "exceeds the labeled train slices"),
    ],
)
def test_allocate_budget_errors(available, budget, message):
    with pytest.raises(ValueError, match=message):
        allocate_budget(available, budget)


@pytest.mark.parametrize("budget", [{"total": 5, "per_class": 2}, {}, {"total": 0}, {"count": 3}])
def test_parse_budget_rejects(budget):
    with pytest.raises(ValueError):
        parse_budget(budget)


def test_draw_uses_train_split_only():
    slices = manifest_slices()
    drawn = draw_label_budget(slices, CLASSES, {"total": 27}, seed=3)
    assert len(drawn) == 27
    assert set(drawn["split"]) == {"train"}
    assert drawn["label"].value_counts().to_dict() == {"ordinary": 9, "severe": 9, "critical": 9}
    test_ids = set(slices.loc[slices["split"] != "train", "slice_id"])
    assert not test_ids & set(drawn["slice_id"])


def test_draw_is_deterministic():
    slices = manifest_slices()
    first = draw_label_budget(slices, CLASSES, {"per_class": 3}, seed=11)
    shuffled = slices.sample(frac=1.0, random_state=0)
    second = draw_label_budget(shuffled, CLASSES, {"per_class": 3}, seed=11)
    other_seed = draw_label_budget(slices, CLASSES, {"per_class": 3}, seed=12)
    assert first["slice_id"].tolist() == second["slice_id"].tolist()
    assert first["slice_id"].tolist() != other_seed["slice_id"].tolist()


def test_draw_error_names_missing_class():
    slices = manifest_slices()
    slices.loc[(slices["split"] == "train") & (slices["label"] == "critical"), "label"] = None
    with pytest.raises(ValueError, match=r"\['critical'\]"):
        draw_label_budget(slices, CLASSES, {"total": 9}, seed=0)


def test_pool_is_rest_of_train_split():
    slices = manifest_slices()
    drawn = draw_label_budget(slices, CLASSES, {"per_class": 2}, seed=0)
    pool = unlabeled_pool(slices, drawn)
    assert len(pool) == 36 - 6
    assert set(pool["split"]) == {"train"}
    assert not set(pool["slice_id"]) & set(drawn["slice_id"])
    assert pool["label"].isna().sum() == 6


# ---------- Mean Teacher ----------


def linear_with_weight(value: float) -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.fill_(value)
        model[1].running_mean.fill_(value)
        model[1].num_batches_tracked.fill_(int(value))
    return model


def test_teacher_update_is_ema():
    teacher, student = linear_with_weight(1.0), linear_with_weight(3.0)
    decay = update_teacher(teacher, student, alpha=0.9, step=100)
    assert decay == pytest.approx(0.9)
    # 0.9 · 1 + 0.1 · 3 = 1.2
    assert teacher[0].weight.item() == pytest.approx(1.2)
    assert teacher[1].running_mean.item() == pytest.approx(1.2)
    assert teacher[1].num_batches_tracked.item() == 3
    assert student[0].weight.item() == pytest.approx(3.0)


def test_teacher_update_early_steps():
    teacher, student = linear_with_weight(1.0), linear_with_weight(3.0)
    # After the first step the decay is min(1 - 1/2, 0.99) = 0.5: the plain average.
    assert update_teacher(teacher, student, alpha=0.99, step=1) == pytest.approx(0.5)
    assert teacher[0].weight.item() == pytest.approx(2.0)
    # Twice more at step 3 (decay 0.75): 0.75 · 2 + 0.25 · 3 = 2.25, then 0.75 · 2.25 + 0.75 = 2.4375.
    update_teacher(teacher, student, alpha=0.99, step=3)
    update_teacher(teacher, student, alpha=0.99, step=3)
    assert teacher[0].weight.item() == pytest.approx(2.4375)


def test_teacher_update_rejects_alpha():
    with pytest.raises(ValueError, match="alpha"):
        update_teacher(linear_with_weight(1.0), linear_with_weight(2.0), alpha=1.0, step=5)


def test_teacher_takes_no_gradient():
    pair = MeanTeacherPair(torch.nn.Linear(2, 2))
    assert not any(parameter.requires_grad for parameter in pair.teacher.parameters())
    assert all(parameter.requires_grad for parameter in pair.student.parameters())
    assert torch.equal(pair.teacher.weight, pair.student.weight)


@pytest.mark.parametrize(
    ("iteration", "rampup", "expected"),
    [
        (0, 100, math.exp(-5.0)),
        (50, 100, math.exp(-1.25)),
        (80, 100, math.exp(-5.0 * 0.04)),
        (100, 100, 1.0),
        (250, 100, 1.0),
        (0, 0, 1.0),
    ],
)
def test_sigmoid_rampup_values(iteration, rampup, expected):
    assert sigmoid_rampup(iteration, rampup) == pytest.approx(expected)


# ---------- metrics ----------


def test_confusion_matrix_counts():
    matrix = confusion_matrix([0, 0, 1, 2, 2], [0, 1, 1, 2, 0], n_classes=3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]


@pytest.mark.parametrize(
    ("references", "predictions"),
    [([0, 1], [0]), ([0, 3], [0, 1]), ([0, 1], [0, -1])],
)
def test_confusion_matrix_rejects(references, predictions):
    with pytest.raises(ValueError):
        confusion_matrix(references, predictions, n_classes=3)


def test_scores_hand_computed():
    # Rows reference, columns predicted; class C has no reference slice but 2 predictions.
    matrix = np.array([[3, 0, 1], [1, 2, 1], [0, 0, 0]])
    scores = classification_scores(matrix, ["A", "B", "C"])
    assert scores["n_slices"] == 8
    assert scores["accuracy"] == pytest.approx(5 / 8)
    assert scores["recall"] == pytest.approx({"A": 3 / 4, "B": 2 / 4})
    assert scores["balanced_accuracy"] == pytest.approx((3 / 4 + 2 / 4) / 2)
    # F1 = 2·TP / (support + predicted): A 6/8, B 4/6, C 0/2.
    assert scores["f1"] == pytest.approx({"A": 0.75, "B": 4 / 6, "C": 0.0})
    assert scores["macro_f1"] == pytest.approx((0.75 + 4 / 6 + 0.0) / 3)
    assert scores["classes_absent"] == ["C"]
    assert scores["support"] == {"A": 4, "B": 4, "C": 0}


def test_scores_perfect_and_empty():
    perfect = classification_scores(np.diag([2, 3]), ["A", "B"])
    assert perfect["accuracy"] == 1.0
    assert perfect["balanced_accuracy"] == 1.0
    assert perfect["macro_f1"] == 1.0
    with pytest.raises(ValueError, match="no slice"):
        classification_scores(np.zeros((2, 2)), ["A", "B"])
    with pytest.raises(ValueError, match="does not match"):
        classification_scores(np.eye(3), ["A", "B"])


def test_mean_and_std():
    mean, std = mean_and_std([0.5, 0.7])
    assert mean == pytest.approx(0.6)
    assert std == pytest.approx(math.sqrt(0.02))
    assert mean_and_std([0.4]) == (0.4, 0.0)
    with pytest.raises(ValueError):
        mean_and_std([0.4, float("nan")])


# ---------- models and preprocessing ----------


VIT_SMALL = {"architecture": "vit_b8", "vit": {"num_layers": 1, "num_heads": 2, "hidden_dim": 16, "mlp_dim": 32}}


@pytest.mark.parametrize(("model_params", "size"), [({"architecture": "resnet18"}, 64), (VIT_SMALL, 32)])
def test_classifier_forward_shape(model_params, size):
    model = build_classifier(model_params, n_classes=3, image_size=size, in_channels=1)
    logits = model(torch.zeros(2, 1, size, size))
    assert logits.shape == (2, 3)
    assert hasattr(model, "encoder")


def test_resnet_encoder_weights_load_by_name():
    model = build_classifier({"architecture": "resnet18"}, n_classes=2, image_size=32)
    model.encoder.load_state_dict(build_resnet18_encoder(in_channels=1).state_dict())
    assert model.encoder.conv1.in_channels == 1


@pytest.mark.parametrize(
    ("model_params", "size", "message"),
    [(VIT_SMALL, 30, "multiple of 8"), ({"architecture": "vgg"}, 32, "not supported")],
)
def test_classifier_rejects(model_params, size, message):
    with pytest.raises(ValueError, match=message):
        build_classifier(model_params, n_classes=2, image_size=size)


def test_grayscale_statistics_are_channel_means():
    mean, std = normalisation_statistics([0.4811, 0.4575, 0.4078], [0.2605, 0.2533, 0.2683], in_channels=1)
    assert mean == pytest.approx(((0.4811 + 0.4575 + 0.4078) / 3,))
    assert std == pytest.approx(((0.2605 + 0.2533 + 0.2683) / 3,))
    rgb_mean, _ = normalisation_statistics([0.5], [0.25], in_channels=3)
    assert rgb_mean == (0.5, 0.5, 0.5)


PREP = Preprocessing(
    input_size=16, in_channels=1, mean=(0.5,), std=(0.25,), crop_padding=2, rotate_degrees=10, flip_probability=0.5
)


def test_evaluation_centre_crop_keeps_slice():
    images = torch.rand(3, 1, 16, 16)
    prepared = prepare_for_evaluation(images, PREP)
    assert prepared.shape == (3, 1, 16, 16)
    assert torch.allclose(prepared, (images - 0.5) / 0.25)


def test_crop_offsets_shift_slice():
    images = torch.arange(16.0).view(1, 1, 4, 4)
    crop = crop_slices(images, 4, padding=1, offsets=torch.tensor([[2, 2]]))
    assert torch.equal(crop[0, 0, :3, :3], images[0, 0, 1:, 1:])


def test_training_augmentation_shape_and_resize():
    generator = torch.Generator().manual_seed(0)
    augmented = augment_for_training(torch.rand(4, 1, 32, 32), PREP, generator, noise_std=0.1)
    assert augmented.shape == (4, 1, 16, 16)
    assert torch.isfinite(augmented).all()


# ---------- nodes and a short training run ----------


def test_out_of_class_values_logged_once(caplog):
    manifest = manifest_slices().rename(columns={"label": "severity"})
    manifest["source"], manifest["patient_id"] = "phantom", "p"
    manifest.loc[[0, 1, 2], "severity"] = "moderate"
    params = {"label_column": "severity", "classes": CLASSES, "sources": None, "evaluation": {"split": "test"}}
    with caplog.at_level(logging.WARNING):
        slices = select_classification_slices(manifest, params)
    warnings = [record for record in caplog.records if "outside classification.classes" in record.getMessage()]
    assert len(warnings) == 1
    assert "'moderate': 3" in warnings[0].getMessage()
    assert slices.loc[[0, 1, 2], "label"].isna().all()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"label_column": "diagnosis"}, "not a manifest column"),
        ({"evaluation": {"split": "holdout"}}, "no slice labeled"),
    ],
)
def test_select_slices_errors(change, message):
    manifest = manifest_slices().rename(columns={"label": "severity"})
    manifest["source"], manifest["patient_id"] = "phantom", "p"
    params = {"label_column": "severity", "classes": CLASSES, "sources": None, "evaluation": {"split": "test"}}
    params.update(change)
    with pytest.raises(ValueError, match=message):
        select_classification_slices(manifest, params)


def tiny_params(iterations: int = 3) -> dict:
    return {
        "classes": ["dark", "bright"],
        "device": "cpu",
        "input_size": 16,
        "model": {"architecture": "resnet18", "in_channels": 1},
        "normalisation": {"mean": [0.5], "std": [0.25]},
        "augmentation": {"rotate_degrees": 5, "flip_probability": 0.5, "crop_padding": 1},
        "training": {
            "iterations": iterations,
            "batch_size": 4,
            "optimizer": "sgd",
            "learning_rate": 0.01,
            "momentum": 0.9,
            "weight_decay": 0.0,
            "monitor": "val_accuracy",
            "validate_every": 2,
            "log_every": 2,
        },
        "mean_teacher": {
            "unlabeled_batch_size": 4,
            "ema_decay": 0.9,
            "consistency_weight": 1.0,
            "rampup_iterations": 2,
            "input_noise_std": 0.02,
        },
    }


def test_mean_teacher_run_returns_teacher():
    images = np.concatenate([np.full((8, 16, 16), 0.1), np.full((8, 16, 16), 0.9)]).astype(np.float16)
    store = SliceStore(arrays={"image": images})
    run = train_classifier(
        store,
        labeled_rows=[0, 1, 2, 3, 8, 9, 10, 11],
        labels=np.array([0] * 4 + [1] * 4),
        pool_rows=[4, 5, 6, 7, 12, 13, 14, 15],
        val_rows=[],
        val_labels=[],
        method="mean_teacher",
        params=tiny_params(),
        seed=0,
        select_on_val=False,
    )
    assert run.selection == "last"
    assert run.selected_iteration == 3
    assert run.model.head.weight.requires_grad is False
    # Without validation the loop's snapshot is the pair after step 3, before the teacher's
    # update for that step; the returned teacher has it: decay min(1 - 1/4, 0.9) = 0.75.
    snapshot = run.result.best_state
    expected = 0.75 * snapshot["teacher.head.weight"] + 0.25 * snapshot["student.head.weight"]
    assert torch.allclose(run.model.head.weight, expected)
    assert not torch.equal(run.model.head.weight, snapshot["student.head.weight"])
