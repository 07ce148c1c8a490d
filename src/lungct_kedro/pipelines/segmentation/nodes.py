"""Nodes of the segmentation pipeline: slice selection, training and test evaluation."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lungct_kedro.datasets.slice_store import SliceStore
from lungct_kedro.pipelines.segmentation.figures import plot_overlays, plot_training_curves
from lungct_kedro.training.metrics import per_slice_lesion_metrics, summarise_segmentation
from lungct_kedro.training.segmentation import (
    load_segmentation_model,
    predict_class_maps,
    reference_class_maps,
    train_segmentation,
)

logger = logging.getLogger(__name__)


def select_segmentation_slices(split_manifest: pd.DataFrame, params: Mapping[str, Any]) -> pd.DataFrame:
    """Pick the slices with masks and their splits for segmentation.

    Args:
        split_manifest: The manifest with its ``split`` column.
        params: The ``segmentation`` parameters; ``sources`` (a list of
            source names, or null for all) limits the slices used.

    Returns:
        Columns ``slice_id``, ``store_index``, ``split``, ``source``,
        ``patient_id``.

    Raises:
        ValueError: No training or no test slice has a mask.
    """
    chosen = split_manifest[split_manifest["has_mask"]]
    sources = params.get("sources")
    if sources:
        unknown = set(sources) - set(split_manifest["source"].unique())
        if unknown:
            raise ValueError(f"segmentation.sources names unknown sources {sorted(unknown)}")
        chosen = chosen[chosen["source"].isin(sources)]
    selected = chosen[["slice_id", "store_index", "split", "source", "patient_id"]].reset_index(drop=True)
    counts = selected["split"].value_counts()
    for split in ("train", "test"):
        if counts.get(split, 0) == 0:
            raise ValueError(
                f"no {split} slice has a mask; declare a source with masks in the catalog "
                "or change splits.ratios"
            )
    logger.info("Segmentation slices: %s", counts.to_dict())
    return selected


def _rows(slices: pd.DataFrame, split: str) -> np.ndarray:
    return slices.loc[slices["split"] == split, "store_index"].to_numpy(dtype=np.int64)


def train_segmentation_model(
    slice_store: SliceStore, segmentation_slices: pd.DataFrame, params: Mapping[str, Any]
) -> tuple[dict[str, Any], pd.DataFrame, Figure]:
    """Train the segmentation network and package its best checkpoint.

    Returns:
        The checkpoint (state dict and what is needed to rebuild the model),
        the training history table and its figure.
    """
    slice_store.check_rows(segmentation_slices["slice_id"], segmentation_slices["store_index"])
    model, result = train_segmentation(
        slice_store, _rows(segmentation_slices, "train"), _rows(segmentation_slices, "val"), params
    )
    checkpoint = {
        "state_dict": {key: value.cpu() for key, value in model.state_dict().items()},
        "model": dict(params["model"]),
        "target": params["target"],
        "image_size": slice_store.image_size,
        "iterations": int(params["training"]["iterations"]),
        "best_iteration": result.best_iteration,
        "monitor": str(params["training"]["monitor"]),
        "best_val_score": result.best_score,
    }
    history = pd.DataFrame(result.history)
    return checkpoint, history, plot_training_curves(history, result.best_iteration)


def evaluate_segmentation_model(
    slice_store: SliceStore,
    segmentation_slices: pd.DataFrame,
    checkpoint: Mapping[str, Any],
    params: Mapping[str, Any],
) -> tuple[dict[str, Any], pd.DataFrame, Figure]:
    """Score the trained network on the test split.

    Returns:
        The metrics (see ``summarise_segmentation``), a per-slice table and
        a figure of test slices with reference and prediction overlaid.
    """
    slice_store.check_rows(segmentation_slices["slice_id"], segmentation_slices["store_index"])
    test = segmentation_slices[segmentation_slices["split"] == "test"].reset_index(drop=True)
    rows = test["store_index"].to_numpy(dtype=np.int64)
    binary = checkpoint["target"] == "binary"
    model, device = load_segmentation_model(checkpoint, params.get("device", "auto"))
    predictions = predict_class_maps(model, slice_store, rows, device, int(params["evaluation"]["batch_size"]))
    references = reference_class_maps(slice_store, rows, binary)

    per_slice = per_slice_lesion_metrics(predictions, references)
    per_slice.insert(0, "slice_id", test["slice_id"].to_numpy())
    per_slice.insert(1, "source", test["source"].to_numpy())
    metrics = {
        "split": "test",
        "target": checkpoint["target"],
        "best_iteration": checkpoint["best_iteration"],
        "monitor": checkpoint["monitor"],
        "best_val_score": checkpoint["best_val_score"],
        **summarise_segmentation(per_slice, predictions, references, multiclass=not binary),
    }
    logger.info(
        "Test Dice %.4f per slice (mean of %d), %.4f pooled; HD95 %.1f px",
        metrics["dice_mean"],
        metrics["n_slices"],
        metrics["dice_pooled"],
        metrics["hd95_px_mean"],
    )

    n_overlays = int(params["evaluation"]["overlay_slices"])
    overlay_rows = per_slice.sort_values("reference_pixels", ascending=False).index[:n_overlays]
    figure = plot_overlays(
        np.asarray(slice_store.arrays["image"][rows[overlay_rows]], dtype=np.float32),
        references[overlay_rows],
        predictions[overlay_rows],
        [f"{per_slice.loc[i, 'slice_id']}, Dice {per_slice.loc[i, 'dice']:.2f}" for i in overlay_rows],
    )
    return metrics, per_slice, figure
