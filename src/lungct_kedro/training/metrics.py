"""Segmentation metrics on MONAI, with explicit rules for empty masks.

Rules, so that no mean is NaN:

* Dice and IoU of a slice whose reference and prediction are both empty are 1;
  if only one of them is empty they are 0 (MONAI's ``ignore_empty=False``).
* HD95 is 0 px when both are empty and the slice diagonal in pixels when only
  one is empty (the largest distance possible on the slice).
* Sensitivity and specificity are pooled over all pixels of all slices, since
  a slice without lesion has no defined sensitivity. The mean per-slice
  sensitivity is also given, over slices that contain lesion only.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou

CLASS_NAMES = {1: "ggo", 2: "consolidation"}


def _one_hot_binary(masks: torch.Tensor) -> torch.Tensor:
    foreground = (masks > 0).float()
    return torch.stack([1.0 - foreground, foreground], dim=1)


def per_slice_lesion_metrics(predictions: np.ndarray, references: np.ndarray) -> pd.DataFrame:
    """Score lesion (any class) masks slice by slice.

    Args:
        predictions: (n, H, W) integer class maps.
        references: (n, H, W) integer class maps of the same shape.

    Returns:
        One row per slice with ``dice``, ``iou``, ``hd95_px``,
        ``sensitivity`` (NaN where the reference is empty), the lesion pixel
        counts and the confusion counts.

    Raises:
        ValueError: The shapes differ.
    """
    if predictions.shape != references.shape:
        raise ValueError(f"prediction shape {predictions.shape} differs from reference shape {references.shape}")
    pred = torch.as_tensor(np.asarray(predictions) > 0)
    ref = torch.as_tensor(np.asarray(references) > 0)
    pred_hot, ref_hot = _one_hot_binary(pred), _one_hot_binary(ref)

    dice = compute_dice(pred_hot, ref_hot, include_background=False, ignore_empty=False)[:, 0]
    iou = compute_iou(pred_hot, ref_hot, include_background=False, ignore_empty=False)[:, 0]

    diagonal = math.hypot(*predictions.shape[-2:])
    pred_any = pred.flatten(1).any(dim=1)
    ref_any = ref.flatten(1).any(dim=1)
    hd95 = torch.zeros(len(pred))
    both = pred_any & ref_any
    if both.any():
        with warnings.catch_warnings():
            # MONAI 1.5+ warns about an argument it passes to itself internally.
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
            hd95[both] = compute_hausdorff_distance(
                pred_hot[both], ref_hot[both], include_background=False, percentile=95
            )[:, 0].float()
    hd95[pred_any ^ ref_any] = diagonal

    tp = (pred & ref).flatten(1).sum(dim=1)
    fp = (pred & ~ref).flatten(1).sum(dim=1)
    fn = (~pred & ref).flatten(1).sum(dim=1)
    tn = (~pred & ~ref).flatten(1).sum(dim=1)
    sensitivity = torch.where(ref_any, tp / (tp + fn).clamp(min=1), torch.tensor(float("nan")))
    return pd.DataFrame(
        {
            "dice": dice.numpy(),
            "iou": iou.numpy(),
            "hd95_px": hd95.numpy(),
            "sensitivity": sensitivity.numpy(),
            "reference_pixels": ref.flatten(1).sum(dim=1).numpy(),
            "predicted_pixels": pred.flatten(1).sum(dim=1).numpy(),
            "tp": tp.numpy(),
            "fp": fp.numpy(),
            "fn": fn.numpy(),
            "tn": tn.numpy(),
        }
    )


def summarise_segmentation(
    per_slice: pd.DataFrame, predictions: np.ndarray, references: np.ndarray, multiclass: bool
) -> dict[str, float | int]:
    """Aggregate per-slice scores into the reported metrics.

    Returns:
        ``dice_mean`` / ``dice_std`` (per slice), ``dice_pooled`` (all
        pixels of all slices as one), ``iou_mean``, ``iou_pooled``,
        ``hd95_px_mean``, pooled ``sensitivity`` and ``specificity``,
        ``sensitivity_mean_lesion_slices``, counts, and for multi-class
        masks the pooled Dice of each lesion class.
    """
    tp, fp, fn, tn = (int(per_slice[column].sum()) for column in ("tp", "fp", "fn", "tn"))
    lesion_slices = per_slice["reference_pixels"] > 0
    summary: dict[str, float | int] = {
        "n_slices": int(len(per_slice)),
        "n_slices_with_lesion": int(lesion_slices.sum()),
        "dice_mean": float(per_slice["dice"].mean()),
        "dice_std": float(per_slice["dice"].std(ddof=0)),
        "dice_pooled": _ratio(2 * tp, 2 * tp + fp + fn),
        "iou_mean": float(per_slice["iou"].mean()),
        "iou_pooled": _ratio(tp, tp + fp + fn),
        "hd95_px_mean": float(per_slice["hd95_px"].mean()),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "sensitivity_mean_lesion_slices": float(per_slice.loc[lesion_slices, "sensitivity"].mean())
        if lesion_slices.any()
        else 1.0,
    }
    if multiclass:
        for label, name in CLASS_NAMES.items():
            pred, ref = predictions == label, references == label
            intersection = int(np.count_nonzero(pred & ref))
            summary[f"dice_pooled_{name}"] = _ratio(
                2 * intersection, int(np.count_nonzero(pred)) + int(np.count_nonzero(ref))
            )
    return summary


def _ratio(numerator: int, denominator: int) -> float:
    """Return numerator / denominator, and 1.0 for 0 / 0 (nothing to find, nothing found)."""
    return float(numerator / denominator) if denominator else 1.0
