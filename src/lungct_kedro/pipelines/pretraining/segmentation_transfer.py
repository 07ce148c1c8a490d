"""Transfer of the pre-trained encoder to lesion segmentation."""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from lungct_kedro.datasets.slice_store import SliceStore
from lungct_kedro.pipelines.segmentation.nodes import select_segmentation_slices
from lungct_kedro.training.metrics import per_slice_lesion_metrics, summarise_segmentation
from lungct_kedro.training.segmentation import predict_class_maps, reference_class_maps, train_segmentation

logger = logging.getLogger(__name__)


def compare_segmentation_transfer(
    slice_store: SliceStore,
    split_manifest: pd.DataFrame,
    pretrained_encoder: Mapping[str, Any],
    segmentation_params: Mapping[str, Any],
    params: Mapping[str, Any],
) -> tuple[pd.DataFrame, str, dict[str, Any]]:
    """Train the ResNet-18 ``FlexibleUNet`` from scratch and from the pre-trained encoder.

    Both runs use the segmentation pipeline's slices, splits, loss, optimiser
    and augmentation, with the iterations and seeds of
    ``pretraining.transfer.segmentation``, so they differ only in the
    encoder's starting weights. Every weight is trained (fine-tuning).

    Returns:
        The table (one row per initialisation: test Dice per slice and pooled,
        mean and std over seeds, absolute and relative change against
        scratch), the same table as Markdown, and a JSON summary.
    """
    settings = params["transfer"]["segmentation"]
    seeds = [int(seed) for seed in settings["seeds"]]
    run_params = copy.deepcopy(dict(segmentation_params))
    # Each arm passes its own encoder weights, and only the segmentation output is compared.
    run_params["model"] = {**run_params["model"], "architecture": "flexible_unet_resnet18", "encoder_init": "random"}
    run_params["multitask"] = {**run_params.get("multitask", {}), "enabled": False}
    run_params["training"] = {
        **run_params["training"],
        "iterations": int(settings["iterations"]),
        "validate_every": int(settings["iterations"]),
    }

    slices = select_segmentation_slices(split_manifest, run_params)
    rows = {split: slices.loc[slices["split"] == split, "store_index"].to_numpy(dtype=np.int64) for split in ("train", "val", "test")}
    binary = run_params["target"] == "binary"
    references = reference_class_maps(slice_store, rows["test"], binary)

    records = []
    for init, encoder_state in (("scratch", None), ("pretrained", pretrained_encoder["state_dict"])):
        for seed in seeds:
            model, _ = train_segmentation(
                slice_store, rows["train"], rows["val"], {**run_params, "seed": seed}, init_encoder_state=encoder_state
            )
            device = next(model.parameters()).device
            predictions = predict_class_maps(model, slice_store, rows["test"], device)
            per_slice = per_slice_lesion_metrics(predictions, references)
            summary = summarise_segmentation(per_slice, predictions, references, multiclass=not binary)
            records.append({"init": init, "seed": seed, "dice_mean": summary["dice_mean"], "dice_pooled": summary["dice_pooled"]})
            logger.info("Segmentation transfer %s, seed %d: test Dice %.4f", init, seed, summary["dice_mean"])

    runs = pd.DataFrame(records)
    table = runs.groupby("init", sort=False).agg(
        n_runs=("seed", "size"),
        dice_mean=("dice_mean", "mean"),
        dice_std=("dice_mean", lambda values: float(np.std(values, ddof=1)) if len(values) > 1 else 0.0),
        dice_pooled_mean=("dice_pooled", "mean"),
    ).reset_index()
    scratch = float(table.loc[table["init"] == "scratch", "dice_mean"].iloc[0])
    table["dice_change_abs"] = table["dice_mean"] - scratch
    table["dice_change_rel_percent"] = 100.0 * table["dice_change_abs"] / scratch if scratch > 0 else float("nan")
    table.insert(0, "task", "segmentation")
    table.insert(2, "mode", "fine_tune")
    table["train_slices"] = len(rows["train"])
    table["test_slices"] = len(rows["test"])
    table["iterations"] = int(settings["iterations"])
    table["seeds"] = ",".join(str(seed) for seed in seeds)

    markdown = _markdown(table, pretrained_encoder.get("method", "unknown"))
    summary = {
        "pretraining_method": pretrained_encoder.get("method"),
        "architecture": "flexible_unet_resnet18",
        "metric": "test Dice of the lesion mask, mean over slices (pooled Dice also given)",
        "table": table.to_dict(orient="records"),
    }
    return table, markdown, summary


def _markdown(table: pd.DataFrame, method: str) -> str:
    lines = [
        f"Segmentation transfer: MONAI FlexibleUNet with a ResNet-18 encoder, from scratch and from the "
        f"{method} pre-trained encoder; test Dice (per-slice mean), mean ± sample std over seeds.",
        "",
        "| init | mode | runs | train slices | iterations | Dice | pooled Dice | change | relative change |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in table.itertuples():
        lines.append(
            f"| {row.init} | {row.mode} | {row.n_runs} | {row.train_slices} | {row.iterations} | "
            f"{row.dice_mean:.3f} ± {row.dice_std:.3f} | {row.dice_pooled_mean:.3f} | "
            f"{row.dice_change_abs:+.3f} | {row.dice_change_rel_percent:+.1f} % |"
        )
    return "\n".join(lines) + "\n"
