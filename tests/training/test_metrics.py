"""Segmentation metrics on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lungct_kedro.training.metrics import per_slice_lesion_metrics, summarise_segmentation


def square(size: int, top: int, left: int, side: int, value: int = 1) -> np.ndarray:
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[top : top + side, left : left + side] = value
    return mask


def test_half_overlap_dice_and_iou():
    reference = square(16, 0, 0, 4)  # 16 pixels
    prediction = square(16, 0, 2, 4)  # 16 pixels, 8 shared
    table = per_slice_lesion_metrics(prediction[None], reference[None])
    assert table.loc[0, "dice"] == pytest.approx(2 * 8 / 32)
    assert table.loc[0, "iou"] == pytest.approx(8 / 24)
    assert table.loc[0, "sensitivity"] == pytest.approx(8 / 16)


@pytest.mark.parametrize(
    ("prediction_empty", "reference_empty", "dice", "hd95"),
    [
        (True, True, 1.0, 0.0),
        (False, True, 0.0, math.hypot(16, 16)),
        (True, False, 0.0, math.hypot(16, 16)),
    ],
)
def test_empty_mask_rules(prediction_empty, reference_empty, dice, hd95):
    lesion = square(16, 4, 4, 4)
    empty = np.zeros_like(lesion)
    prediction = empty if prediction_empty else lesion
    reference = empty if reference_empty else lesion
    table = per_slice_lesion_metrics(prediction[None], reference[None])
    assert table.loc[0, "dice"] == dice
    assert table.loc[0, "hd95_px"] == pytest.approx(hd95)


def test_hd95_of_shifted_square():
    reference = square(32, 8, 8, 8)
    prediction = square(32, 8, 11, 8)  # shifted right by 3 pixels
    table = per_slice_lesion_metrics(prediction[None], reference[None])
    assert table.loc[0, "hd95_px"] == pytest.approx(3.0)


def test_classes_merged_for_lesion_metrics():
    reference = square(8, 0, 0, 2, value=1)
    prediction = square(8, 0, 0, 2, value=2)
    table = per_slice_lesion_metrics(prediction[None], reference[None])
    assert table.loc[0, "dice"] == 1.0


def test_summary_pooled_and_mean_differ():
    references = np.stack([square(16, 0, 0, 8), square(16, 0, 0, 2)])  # 64 and 4 pixels
    predictions = np.stack([square(16, 0, 0, 8), np.zeros((16, 16), dtype=np.uint8)])
    table = per_slice_lesion_metrics(predictions, references)
    summary = summarise_segmentation(table, predictions, references, multiclass=False)
    assert summary["dice_mean"] == pytest.approx(0.5)
    assert summary["dice_pooled"] == pytest.approx(2 * 64 / (64 + 68))
    assert summary["sensitivity"] == pytest.approx(64 / 68)
    assert summary["specificity"] == 1.0
    assert summary["n_slices_with_lesion"] == 2


def test_summary_never_nan_without_lesions():
    empty = np.zeros((3, 8, 8), dtype=np.uint8)
    table = per_slice_lesion_metrics(empty, empty)
    summary = summarise_segmentation(table, empty, empty, multiclass=True)
    assert not any(isinstance(value, float) and math.isnan(value) for value in summary.values())


def test_per_class_dice():
    reference = square(8, 0, 0, 2, value=1) + square(8, 4, 4, 2, value=2)
    prediction = square(8, 0, 0, 2, value=1) + square(8, 4, 4, 2, value=1)
    summary = summarise_segmentation(
        per_slice_lesion_metrics(prediction[None], reference[None]), prediction[None], reference[None], True
    )
    assert summary["dice_pooled_ggo"] == pytest.approx(2 * 4 / (8 + 4))
    assert summary["dice_pooled_consolidation"] == 0.0


def test_shape_mismatch_rejected():
    with pytest.raises(ValueError, match="shape"):
        per_slice_lesion_metrics(np.zeros((1, 4, 4)), np.zeros((1, 5, 5)))
