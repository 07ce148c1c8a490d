"""Nodes of the reporting pipeline: the LungCT-Multi export."""

from __future__ import annotations

import logging
import time
from typing import Any

import pandas as pd

from lungct_kedro.datasets import SliceStore
from lungct_kedro.datasets.export import FileContent
from lungct_kedro.pipelines.reporting.card import render_dataset_card
from lungct_kedro.pipelines.reporting.export import (
    SPLITS,
    check_dehazing_pairs,
    clinical_info,
    csv_bytes,
    image_png,
    json_bytes,
    mask_png,
    monai_datalist,
    nnunet_dataset_json,
    public_slice_table,
    select_classification,
    select_pretraining,
    split_counts,
)

logger = logging.getLogger(__name__)


def _segmentation_files(
    store: SliceStore, segmentation: pd.DataFrame, bit_depth: int, nnunet_folder: str
) -> dict[str, FileContent]:
    files: dict[str, FileContent] = {}
    for row in segmentation.itertuples():
        image = image_png(store.arrays["image"], row.store_index, bit_depth)
        mask = mask_png(store.arrays["mask"], row.store_index)
        files[f"segmentation/images/{row.slice_id}.png"] = image
        files[f"segmentation/masks/{row.slice_id}.png"] = mask
        # nnU-Net trains with its own cross-validation, so train and val both go to imagesTr.
        if row.split == "test":
            files[f"{nnunet_folder}/imagesTs/{row.slice_id}_0000.png"] = image
        else:
            files[f"{nnunet_folder}/imagesTr/{row.slice_id}_0000.png"] = image
            files[f"{nnunet_folder}/labelsTr/{row.slice_id}.png"] = mask
    files["segmentation/datalist.json"] = json_bytes(monai_datalist(segmentation))
    return files


def _dehazing_files(subset: pd.DataFrame, pairs: SliceStore, bit_depth: int) -> dict[str, FileContent]:
    check_dehazing_pairs(subset, pairs.attributes.get("slice_ids"), len(pairs))
    files: dict[str, FileContent] = {}
    for row in subset.itertuples():
        name = f"{row.slice_id}_{row.variant}.png"
        files[f"dehazing/hazy/{name}"] = image_png(pairs.arrays["image"], row.pair_index, bit_depth)
        files[f"dehazing/enhanced/{name}"] = image_png(pairs.arrays["image_enhanced"], row.pair_index, bit_depth)
    return files


def _metadata_files(manifest: pd.DataFrame, export: dict[str, Any]) -> dict[str, FileContent]:
    files: dict[str, FileContent] = {
        "metadata/clinical_info.csv": csv_bytes(clinical_info(manifest, export["clinical_columns"])),
        "metadata/slices.csv": csv_bytes(public_slice_table(manifest, export["excluded_columns"])),
    }
    for split in SPLITS:
        rows = manifest.loc[manifest["split"] == split, ["slice_id", "patient_id", "source"]]
        files[f"metadata/splits/{split}.csv"] = csv_bytes(rows.sort_values("slice_id"))
    return files


def export_lungct_multi(
    slice_store: SliceStore,
    split_manifest: pd.DataFrame,
    dehazing_subset: pd.DataFrame,
    dehazing_pairs: SliceStore,
    reporting: dict[str, Any],
    classification: dict[str, Any],
    pretraining: dict[str, Any],
) -> tuple[dict[str, FileContent], dict[str, Any]]:
    """Lay out the published LungCT-Multi folder from the slice store and the split manifest.

    The subsets are computed here from the classification and pre-training
    parameters, so the export does not depend on those pipelines' outputs.
    PNG files are encoded lazily, one at a time, when the dataset writes them.

    Args:
        slice_store: The harmonised slices (``image``, and ``mask`` where masks exist).
        split_manifest: One row per slice with its ``split``.
        dehazing_subset: The curated low-quality slices with their ``pair_index``.
        dehazing_pairs: Hazy ``image`` and ``image_enhanced`` per ``pair_index``.
        reporting: The ``reporting`` parameters.
        classification: The ``classification`` parameters (label column, classes, sources).
        pretraining: The ``pretraining`` parameters (sources).

    Returns:
        The export, a mapping from relative paths to file contents, and a
        summary of the slice counts per subset and split.

    Raises:
        ValueError: The store, manifest, subset and pairs come from different runs,
            a named source is missing, or the bit depth is not 8 or 16.
    """
    started = time.perf_counter()
    export = reporting["export"]
    bit_depth = int(export["image_bit_depth"])
    manifest = split_manifest.sort_values("slice_id").reset_index(drop=True)
    slice_store.check_rows(manifest["slice_id"].tolist(), manifest["store_index"].tolist())
    nnunet_folder = f"nnunet/Dataset{int(reporting['nnunet_dataset_id']):03d}_{reporting['nnunet_dataset_name']}"

    segmentation = manifest[manifest["has_mask"].astype(bool)] if slice_store.has("mask") else manifest.iloc[:0]
    labeled, unlabeled = select_classification(manifest, classification)
    pretraining_rows = select_pretraining(manifest, pretraining)

    files: dict[str, FileContent] = {}
    files.update(_segmentation_files(slice_store, segmentation, bit_depth, nnunet_folder))
    n_training = int((segmentation["split"] != "test").sum())
    licence = "; ".join(
        f"{source}: {reporting['source_licences'].get(source, 'not stated')}"
        for source in sorted(set(segmentation["source"]))
    )
    files[f"{nnunet_folder}/dataset.json"] = json_bytes(nnunet_dataset_json(n_training, licence))
    for row in labeled.itertuples():
        files[f"classification/labeled/{row.label}/{row.slice_id}.png"] = image_png(
            slice_store.arrays["image"], row.store_index, bit_depth
        )
    for row in unlabeled.itertuples():
        files[f"classification/unlabeled/{row.slice_id}.png"] = image_png(
            slice_store.arrays["image"], row.store_index, bit_depth
        )
    for row in pretraining_rows.itertuples():
        files[f"pre-training/{row.slice_id}.png"] = image_png(slice_store.arrays["image"], row.store_index, bit_depth)
    files.update(_dehazing_files(dehazing_subset, dehazing_pairs, bit_depth))
    files.update(_metadata_files(manifest, export))

    subsets = {
        "segmentation": segmentation,
        "classification (labeled)": labeled,
        "classification (unlabeled)": unlabeled,
        "pre-training": pretraining_rows,
        "dehazing (pairs)": dehazing_subset,
    }
    files["DATASET_CARD.md"] = render_dataset_card(
        manifest, subsets, slice_store.attributes, reporting, classification, pretraining
    ).encode("utf-8")

    summary = {
        "n_files": len(files) + 1,  # checksums.sha256 is added by the dataset
        "image_bit_depth": bit_depth,
        "nnunet_folder": nnunet_folder,
        "subsets": {name: split_counts(table) for name, table in subsets.items()},
        "labeled_per_class": {str(label): int(count) for label, count in labeled["label"].value_counts().items()},
    }
    logger.info(
        "Export laid out: %d files, %d segmentation, %d labeled, %d unlabeled, %d pre-training, %d dehazing slices "
        "in %.1f s",
        summary["n_files"],
        len(segmentation),
        len(labeled),
        len(unlabeled),
        len(pretraining_rows),
        len(dehazing_subset),
        time.perf_counter() - started,
    )
    return files, summary
