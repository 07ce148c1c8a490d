"""Nodes of the segmentation-inference pipeline."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from lungct_kedro.datasets.slice_store import SliceStore
from lungct_kedro.imaging.hu import restore_original_geometry
from lungct_kedro.pipelines.segmentation.figures import plot_overlays
from lungct_kedro.training.metrics import per_slice_lesion_metrics, summarise_segmentation
from lungct_kedro.training.segmentation import load_segmentation_model, predict_class_maps, reference_class_maps

logger = logging.getLogger(__name__)


def predict_new_scans(
    inference_store: SliceStore,
    inference_manifest: pd.DataFrame,
    checkpoint: Mapping[str, Any],
    params: Mapping[str, Any],
) -> tuple[dict[str, Image.Image], dict[str, Any], pd.DataFrame, Figure]:
    """Apply a trained checkpoint to newly ingested scans.

    Returns:
        Predicted class maps as PNG images keyed by ``slice_id``, in the
        source slice's own size and orientation (pixel value = class index:
        0 background, 1 ground-glass opacity, 2 consolidation); metrics over
        the slices that have reference masks (``{"n_slices_scored": 0}`` when
        none has); a per-slice table; and a figure of predictions overlaid
        on the slices with the most predicted lesion.

    Raises:
        ValueError: The store's slice size differs from the checkpoint's.
    """
    if inference_store.image_size != checkpoint["image_size"]:
        raise ValueError(
            f"inference slices are {inference_store.image_size} px but the model was trained on "
            f"{checkpoint['image_size']} px; ingest both with the same ingestion.image_size"
        )
    inference_store.check_rows(inference_manifest["slice_id"], inference_manifest["store_index"])
    rows = inference_manifest["store_index"].to_numpy(dtype=np.int64)
    model, device = load_segmentation_model(checkpoint, params.get("device", "auto"))
    predictions = predict_class_maps(model, inference_store, rows, device, int(params["evaluation"]["batch_size"]))
    images = {
        slice_id: Image.fromarray(restore_original_geometry(prediction, int(height), int(width)), mode="L")
        for slice_id, prediction, height, width in zip(
            inference_manifest["slice_id"],
            predictions,
            inference_manifest["original_height"],
            inference_manifest["original_width"],
        )
    }

    table = inference_manifest[["slice_id", "source", "has_mask"]].reset_index(drop=True)
    table["predicted_pixels"] = (predictions > 0).reshape(len(predictions), -1).sum(axis=1)
    scored = table.index[table["has_mask"]].to_numpy()
    metrics: dict[str, Any] = {"n_slices": int(len(table)), "n_slices_scored": int(len(scored))}
    if len(scored):
        binary = checkpoint["target"] == "binary"
        references = reference_class_maps(inference_store, rows[scored], binary)
        per_slice = per_slice_lesion_metrics(predictions[scored], references)
        table.loc[scored, "dice"] = per_slice["dice"].to_numpy()
        table.loc[scored, "hd95_px"] = per_slice["hd95_px"].to_numpy()
        metrics.update(summarise_segmentation(per_slice, predictions[scored], references, multiclass=not binary))
        logger.info("Inference Dice %.4f per slice over %d scored slices", metrics["dice_mean"], len(scored))
    else:
        logger.info("Inference: no reference masks, %d slices predicted without scores", len(table))
    n_overlays = int(params["evaluation"]["overlay_slices"])
    overlay_rows = table.sort_values("predicted_pixels", ascending=False).index[:n_overlays]
    figure = plot_overlays(
        np.asarray(inference_store.arrays["image"][rows[overlay_rows]], dtype=np.float32),
        None,
        predictions[overlay_rows],
        [f"{table.loc[i, 'source']} {table.loc[i, 'slice_id']}" for i in overlay_rows],
        title="New scans with predicted lesions\nyellow = ground-glass, red = consolidation",
    )
    return images, metrics, table, figure

