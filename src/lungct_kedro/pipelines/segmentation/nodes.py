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
    segmentation_checkpoint,
    train_segmentation,
)
from lungct_kedro.training.segmentation_params import validate_segmentation_params

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
        ValueError: Invalid ``segmentation`` parameters, or no training or no
            test slice has a mask.
    """
    validate_segmentation_params(params)
    chosen = split_manifest[split_manifest["has_mask"]]
    sources = params.get("sources")
    if sources:
        _check_sources(split_manifest, sources, "segmentation.sources")
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


def _check_sources(split_manifest: pd.DataFrame, sources: list[str], key: str) -> None:
    unknown = set(sources) - set(split_manifest["source"].unique())
    if unknown:
        raise ValueError(
            f"{key} names unknown sources {sorted(unknown)}; the manifest has {sorted(split_manifest['source'].unique())}"
        )


AUXILIARY_COLUMNS = ["slice_id", "store_index", "source", "has_mask", "unlabeled", "class_label", "class_index"]


def select_auxiliary_slices(split_manifest: pd.DataFrame, params: Mapping[str, Any]) -> pd.DataFrame:
    """Pick the training-split slices that Mean Teacher and the multi-task head use beside the labeled ones.

    * Unlabeled (``method: mean_teacher``): training slices without a mask,
      from ``mean_teacher.unlabeled_sources`` (null: every source). When
      there are none, as on the phantom where every slice has a mask, the
      consistency loss uses the labeled training slices only, and an INFO
      log line reports it.
    * Class targets (``multitask.enabled``): training slices, with or
      without a mask, whose ``multitask.label_column`` value is one of
      ``multitask.classes``. Slices where the value is missing have no
      class.

    Only the training split is used, so no validation or test slice takes
    part in training.

    Args:
        split_manifest: The manifest with its ``split`` column.
        params: The ``segmentation`` parameters.

    Returns:
        One row per slice that is unlabeled or has a class: ``slice_id``,
        ``store_index``, ``source``, ``has_mask``, ``unlabeled`` (used by the
        consistency loss), ``class_label`` and ``class_index`` (−1 without a
        class). Empty for supervised training without the multi-task head.

    Raises:
        ValueError: Unknown sources in ``unlabeled_sources``; with the
            multi-task head on, a missing label column or no training slice
            with a class.
    """
    train = split_manifest[split_manifest["split"] == "train"]
    unlabeled = pd.Series(False, index=train.index)
    if params.get("method", "supervised") == "mean_teacher":
        unlabeled = _unlabeled_training_slices(split_manifest, train, params.get("mean_teacher") or {})

    class_index = pd.Series(-1, index=train.index, dtype="int64")
    class_label = pd.Series(pd.NA, index=train.index, dtype="string")
    multitask = params.get("multitask") or {}
    if multitask.get("enabled", False):
        class_label, class_index = _class_targets(split_manifest, train, multitask)

    chosen = unlabeled | (class_index >= 0)
    selected = train.loc[chosen, ["slice_id", "store_index", "source", "has_mask"]].copy()
    selected["unlabeled"] = unlabeled[chosen].to_numpy(dtype=bool)
    selected["class_label"] = class_label[chosen].astype("string").to_numpy()
    selected["class_index"] = class_index[chosen].to_numpy(dtype=np.int64)
    return selected[AUXILIARY_COLUMNS].reset_index(drop=True)


def _unlabeled_training_slices(
    split_manifest: pd.DataFrame, train: pd.DataFrame, teacher: Mapping[str, Any]
) -> pd.Series:
    sources = teacher.get("unlabeled_sources")
    candidates = ~train["has_mask"].astype(bool)
    if sources:
        _check_sources(split_manifest, list(sources), "segmentation.mean_teacher.unlabeled_sources")
        candidates &= train["source"].isin(sources)
    if not candidates.any():
        logger.info(
            "Mean Teacher: no training slice without a mask in %s, so the consistency loss uses the labeled "
            "training slices only",
            f"the sources {list(sources)}" if sources else "any source",
        )
    else:
        logger.info(
            "Mean Teacher: %d unlabeled training slices (%s)",
            int(candidates.sum()),
            train.loc[candidates, "source"].value_counts().to_dict(),
        )
    return candidates


def _class_targets(
    split_manifest: pd.DataFrame, train: pd.DataFrame, multitask: Mapping[str, Any]
) -> tuple[pd.Series, pd.Series]:
    column = multitask.get("label_column")
    classes = [str(name) for name in multitask.get("classes") or []]
    if column not in split_manifest.columns:
        raise ValueError(
            f"segmentation.multitask.label_column {column!r} is not a manifest column; the manifest has "
            f"{sorted(split_manifest.columns)}. Name a label column that a source provides, or set "
            "segmentation.multitask.enabled: false"
        )
    values = train[column].astype("string")
    outside = values.notna() & ~values.isin(classes)
    if outside.any():
        logger.warning(
            "Multi-task head: manifest column %r has values outside segmentation.multitask.classes %s %s; "
            "those slices get no class",
            column,
            classes,
            values[outside].value_counts().to_dict(),
        )
        values = values.mask(outside)
    known = values.notna()
    if not known.any():
        raise ValueError(
            f"no training slice has a value in manifest column {column!r}, so the multi-task head has nothing "
            "to learn; choose another segmentation.multitask.label_column or disable multitask"
        )
    index = values.map(lambda value: classes.index(value) if isinstance(value, str) else -1).astype("int64")
    logger.info(
        "Multi-task head: %d training slices with a %s class (%s)",
        int(known.sum()),
        column,
        values[known].value_counts().to_dict(),
    )
    return values, index


def _rows(slices: pd.DataFrame, split: str) -> np.ndarray:
    return slices.loc[slices["split"] == split, "store_index"].to_numpy(dtype=np.int64)


def train_segmentation_model(
    slice_store: SliceStore,
    segmentation_slices: pd.DataFrame,
    auxiliary_slices: pd.DataFrame,
    pretrained_encoder: Mapping[str, Any] | None,
    params: Mapping[str, Any],
) -> tuple[dict[str, Any], pd.DataFrame, Figure]:
    """Train the segmentation network with the configured method and package its best checkpoint.

    Args:
        slice_store: The slice store.
        segmentation_slices: Slices with masks and their split.
        auxiliary_slices: Unlabeled and class-carrying training slices
            (``select_auxiliary_slices``).
        pretrained_encoder: The pretraining pipeline's checkpoint, or None
            when it has not been written.
        params: The ``segmentation`` parameters.

    Returns:
        The checkpoint (state dict and what is needed to rebuild the model),
        the training history table and its figure.

    Raises:
        ValueError: ``model.encoder_init`` is ``pretrained`` and the
            pre-trained encoder does not exist yet.
    """
    slice_store.check_rows(segmentation_slices["slice_id"], segmentation_slices["store_index"])
    slice_store.check_rows(auxiliary_slices["slice_id"], auxiliary_slices["store_index"])
    encoder_state = None
    if params["model"].get("encoder_init", "random") == "pretrained":
        if pretrained_encoder is None:
            raise ValueError(
                "segmentation.model.encoder_init is pretrained, but data/06_models/pretrained_encoder.pt does not "
                "exist; run the pretraining pipeline first (kedro run --pipeline=pretraining) or set "
                "encoder_init: random"
            )
        encoder_state = pretrained_encoder["state_dict"]
        logger.info("Starting the encoder from the %s pre-trained weights", pretrained_encoder.get("method", "unknown"))

    unlabeled = auxiliary_slices.loc[auxiliary_slices["unlabeled"], "store_index"].to_numpy(dtype=np.int64)
    with_class = auxiliary_slices[auxiliary_slices["class_index"] >= 0]
    class_targets = dict(zip(with_class["store_index"].astype(int), with_class["class_index"].astype(int)))
    model, result = train_segmentation(
        slice_store,
        _rows(segmentation_slices, "train"),
        _rows(segmentation_slices, "val"),
        params,
        init_encoder_state=encoder_state,
        unlabeled_indices=unlabeled,
        class_targets=class_targets or None,
    )
    checkpoint = segmentation_checkpoint(model, result, params, slice_store.image_size)
    history = pd.DataFrame(result.history)
    return checkpoint, history, plot_training_curves(history, result.best_iteration)


def evaluate_segmentation_model(
    slice_store: SliceStore,
    segmentation_slices: pd.DataFrame,
    checkpoint: Mapping[str, Any],
    params: Mapping[str, Any],
) -> tuple[dict[str, Any], pd.DataFrame, Figure]:
    """Score the trained network on the test split, with the ``segmentation.inference`` options.

    ``inference.flip_tta`` averages the softmax over four flip views;
    ``inference.postprocess`` applies the lung mask and removes small lesion
    components (see ``training.postprocess``).

    Returns:
        The metrics (see ``summarise_segmentation``), a per-slice table and
        a figure of test slices with reference and prediction overlaid.
    """
    slice_store.check_rows(segmentation_slices["slice_id"], segmentation_slices["store_index"])
    test = segmentation_slices[segmentation_slices["split"] == "test"].reset_index(drop=True)
    rows = test["store_index"].to_numpy(dtype=np.int64)
    binary = checkpoint["target"] == "binary"
    inference = params.get("inference") or {}
    model, device = load_segmentation_model(checkpoint, params.get("device", "auto"))
    predictions = predict_class_maps(
        model,
        slice_store,
        rows,
        device,
        int(params["evaluation"]["batch_size"]),
        flip_tta=bool(inference.get("flip_tta", False)),
        postprocess=inference.get("postprocess"),
    )
    references = reference_class_maps(slice_store, rows, binary)

    per_slice = per_slice_lesion_metrics(predictions, references)
    per_slice.insert(0, "slice_id", test["slice_id"].to_numpy())
    per_slice.insert(1, "source", test["source"].to_numpy())
    metrics = {
        "split": "test",
        "target": checkpoint["target"],
        "method": checkpoint.get("method", "supervised"),
        "architecture": checkpoint["model"].get("architecture", "unet"),
        "multitask": checkpoint.get("multitask_classes") is not None,
        "flip_tta": bool(inference.get("flip_tta", False)),
        "postprocess": dict(inference.get("postprocess") or {}),
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
