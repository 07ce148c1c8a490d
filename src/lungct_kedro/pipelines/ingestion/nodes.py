"""Nodes that read every declared source into one slice store and manifest."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lungct_kedro.datasets.slice_store import SliceStore
from lungct_kedro.datasets.sources import DeclaredSource, LabelJoin
from lungct_kedro.imaging.hu import AIR_HU, apply_window, resize_image, resize_mask
from lungct_kedro.pipelines.ingestion.pseudonyms import pseudonym
from lungct_kedro.readers.base import InvalidSourceError, RawSlice, SkippedFile

logger = logging.getLogger(__name__)

SEVERITY_GRADES = ("ordinary", "severe", "critical")

#: Pseudonym key used when LUNGCT_PSEUDONYM_SECRET is unset. It is public, so
#: anyone holding an original ID can recompute its pseudonym: fine for the
#: phantom, not for real scans.
PUBLIC_PSEUDONYM_SECRET = "lungct-kedro-public-default"

#: Manifest columns written by ingestion; label columns follow them.
MANIFEST_COLUMNS = [
    "slice_id",
    "store_index",
    "patient_id",
    "volume_id",
    "source",
    "source_kind",
    "slice_index",
    "spacing_row_mm",
    "spacing_col_mm",
    "slice_thickness_mm",
    "original_height",
    "original_width",
    "has_hu",
    "has_mask",
    "has_lowq",
    "lesion_pixels",
    "ggo_pixels",
    "consolidation_pixels",
    "lesion_fraction",
    "content_hash",
]


def harmonise_sources(
    sources: list[DeclaredSource],
    phantom_params: Mapping[str, Any],
    ingestion_params: Mapping[str, Any],
) -> tuple[pd.DataFrame, dict[str, Any], SliceStore]:
    """Read every declared source into one store of fixed-size slices.

    Each slice is padded to a square and resized to ``image_size`` pixels.
    Hounsfield-unit sources go through the lung window into [0, 1] and keep
    their HU values; already windowed images keep their scaled intensities.
    Original identifiers become keyed-hash pseudonyms.

    Args:
        sources: Declared sources from the catalog.
        phantom_params: Settings of the synthetic phantom.
        ingestion_params: ``image_size`` (px), ``window_level_hu``,
            ``window_width_hu`` and ``mask_values`` (allowed class indices).
            The pseudonym key comes with each source, not from here.

    Returns:
        The manifest (one row per slice), a run summary with counts per
        source, and the slice store. Kedro saves outputs in this order, so the
        store, which is renamed into place last, is only replaced once the
        manifest has been written.

    Raises:
        InvalidSourceError: A file is corrupt, a mask does not fit its image,
            a label is unknown or missing, or a source yields no slice. Files
            of sources with ``skip_invalid: true`` are logged, counted and
            left out instead.
    """
    started = time.perf_counter()
    size = int(ingestion_params["image_size"])
    window = (float(ingestion_params["window_level_hu"]), float(ingestion_params["window_width_hu"]))
    mask_values = set(int(value) for value in ingestion_params["mask_values"])

    columns: dict[str, list[np.ndarray]] = {"image": [], "mask": [], "hu": [], "image_lowq": []}
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"sources": {}}

    for source in sources:
        source_started = time.perf_counter()
        skipped: list[SkippedFile] | None = [] if source.skip_invalid else None
        label_table = _load_label_table(source.labels)
        secret = _pseudonym_secret(source)
        n_before = len(rows)
        for raw in source.read(skipped, phantom_params):
            try:
                labels = _labels_for(raw, source, label_table)
                if labels is None:
                    continue
                arrays = _harmonise_slice(raw, source, size, window, mask_values)
            except InvalidSourceError as error:
                if skipped is None:
                    raise
                skipped.append(SkippedFile(error.path, error.problem))
                logger.warning("Skipped %s: %s", error.path, error.problem)
                continue
            for name, array in arrays.items():
                columns[name].append(array)
            rows.append(_manifest_row(raw, source, arrays, labels, len(rows), secret))

        n_read = len(rows) - n_before
        if n_read == 0:
            raise InvalidSourceError(
                source.path or source.name,
                f"source '{source.name}' produced no slice",
                "check the path and options in the catalog, or remove the source",
            )
        summary["sources"][source.name] = {
            "kind": source.kind,
            "slices": n_read,
            "slices_with_mask": int(sum(row["has_mask"] for row in rows[n_before:])),
            "skipped_files": len(skipped or []),
        }
        logger.info(
            "Source '%s' (%s): %d slices, %d skipped files, %.1f s",
            source.name,
            source.kind,
            n_read,
            len(skipped or []),
            time.perf_counter() - source_started,
        )

    store = _stack_store(columns, rows, size, window)
    manifest = _build_manifest(rows)
    summary.update(
        n_slices=len(manifest),
        n_patients=int(manifest["patient_id"].nunique()),
        image_size=size,
        window_level_hu=window[0],
        window_width_hu=window[1],
        seconds=round(time.perf_counter() - started, 2),
    )
    logger.info(
        "Ingestion done: %d slices from %d sources, %d with masks, %.1f s",
        len(manifest),
        len(sources),
        int(manifest["has_mask"].sum()),
        summary["seconds"],
    )
    store.attributes["slice_ids"] = manifest["slice_id"].tolist()
    return manifest, summary, store


def _pseudonym_secret(source: DeclaredSource) -> str:
    if source.pseudonym_secret:
        return source.pseudonym_secret
    if source.kind != "phantom":
        logger.warning(
            "Source '%s' is pseudonymised with the public default key, so anyone holding an original "
            "patient ID can recompute its pseudonym; set LUNGCT_PSEUDONYM_SECRET before ingesting real scans",
            source.name,
        )
    return PUBLIC_PSEUDONYM_SECRET


def _load_label_table(join: LabelJoin | None):
    if join is None:
        return None
    from lungct_kedro.readers import LabelTable

    return LabelTable.from_csv(join.path, join.key_column, join.columns)


def _labels_for(raw: RawSlice, source: DeclaredSource, table) -> dict[str, Any] | None:
    """Merge the source's own labels with its label table; None means skip the slice."""
    labels = dict(raw.labels)
    join = source.labels
    if join is not None:
        key = _join_key(raw, source, join)
        if key is None or key not in table.keys:
            if join.missing == "skip":
                return None
            if join.missing == "error":
                # Raises InvalidSourceError naming the table, the key and the fix.
                table.labels_for(key if key is not None else "")
        else:
            labels.update(table.labels_for(key))
    _check_severity(labels.get("severity"), raw, source)
    return labels


def _join_key(raw: RawSlice, source: DeclaredSource, join: LabelJoin) -> str | None:
    if join.join_on == "patient":
        return raw.patient_key
    base = source.path if source.path.is_dir() else source.path.parent
    relative = os.path.relpath(base / raw.file_key, join.path.parent)
    return Path(relative).as_posix()


def _check_severity(value: Any, raw: RawSlice, source: DeclaredSource) -> None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return
    if str(value).strip().lower() not in SEVERITY_GRADES:
        raise InvalidSourceError(
            _slice_path(raw, source),
            f"unknown severity label {value!r}",
            f"use one of {list(SEVERITY_GRADES)} or leave the cell empty",
        )


def _slice_path(raw: RawSlice, source: DeclaredSource) -> str:
    return str(source.path / raw.file_key) if source.path is not None else f"{source.name}:{raw.file_key}"


def _harmonise_slice(
    raw: RawSlice,
    source: DeclaredSource,
    size: int,
    window: tuple[float, float],
    mask_values: set[int],
) -> dict[str, np.ndarray]:
    where = _slice_path(raw, source)
    pixels = np.asarray(raw.pixels, dtype=np.float32)
    if pixels.ndim != 2:
        raise InvalidSourceError(where, f"slice has shape {pixels.shape}, expected a 2D image", "export 2D slices")
    if not np.isfinite(pixels).all():
        raise InvalidSourceError(
            where, "slice contains NaN or infinite values", "re-export the file or set skip_invalid: true"
        )
    arrays: dict[str, np.ndarray] = {}
    if raw.is_hu:
        arrays["hu"] = np.round(resize_image(pixels, size, AIR_HU)).clip(-32768, 32767).astype(np.int16)
        arrays["image"] = apply_window(resize_image(pixels, size, AIR_HU), *window)
    else:
        arrays["image"] = np.clip(resize_image(pixels, size, 0.0), 0.0, 1.0)
    if raw.lowq_pixels is not None:
        arrays["image_lowq"] = apply_window(resize_image(raw.lowq_pixels, size, AIR_HU), *window)
    if raw.mask is not None:
        if raw.mask.shape != pixels.shape:
            raise InvalidSourceError(
                where,
                f"mask shape {raw.mask.shape} does not match image shape {pixels.shape}",
                "pair each image with a mask of the same size",
            )
        mask = _renumber(raw.mask, source.mask_map)
        found = set(np.unique(mask).tolist())
        if not found <= mask_values:
            raise InvalidSourceError(
                where,
                f"mask holds values {sorted(found - mask_values)} outside {sorted(mask_values)}",
                "convert the mask to class indices, set the source's mask_format option, "
                "or renumber classes with the source's mask_map",
            )
        arrays["mask"] = resize_mask(mask, size)
    return arrays


def _renumber(mask: np.ndarray, mask_map: Mapping[int, int]) -> np.ndarray:
    if not mask_map:
        return mask
    lookup = np.arange(256, dtype=np.uint8)
    for old, new in mask_map.items():
        lookup[old] = new
    return lookup[np.asarray(mask, dtype=np.uint8)]


def _manifest_row(
    raw: RawSlice,
    source: DeclaredSource,
    arrays: dict[str, np.ndarray],
    labels: dict[str, Any],
    store_index: int,
    secret: str,
) -> dict[str, Any]:
    mask = arrays.get("mask")
    height, width = np.asarray(raw.pixels).shape
    spacing = raw.spacing_mm or (None, None)
    lesion = int(np.count_nonzero(mask)) if mask is not None else 0
    row: dict[str, Any] = {
        "slice_id": pseudonym("sl", secret, source.name, raw.file_key, raw.slice_index),
        "store_index": store_index,
        "patient_id": pseudonym("pat", secret, source.name, raw.patient_key) if raw.patient_key else None,
        "volume_id": pseudonym("vol", secret, source.name, raw.volume_key) if raw.volume_key else None,
        "source": source.name,
        "source_kind": source.kind,
        "slice_index": int(raw.slice_index),
        "spacing_row_mm": spacing[0],
        "spacing_col_mm": spacing[1],
        "slice_thickness_mm": raw.slice_thickness_mm,
        "original_height": int(height),
        "original_width": int(width),
        "has_hu": "hu" in arrays,
        "has_mask": mask is not None,
        "has_lowq": "image_lowq" in arrays,
        "lesion_pixels": lesion,
        "ggo_pixels": int(np.count_nonzero(mask == 1)) if mask is not None else 0,
        "consolidation_pixels": int(np.count_nonzero(mask == 2)) if mask is not None else 0,
        "lesion_fraction": lesion / mask.size if mask is not None else 0.0,
        "content_hash": hashlib.sha256(arrays["image"].astype(np.float16).tobytes()).hexdigest()[:16],
    }
    for key, value in labels.items():
        if key in row:
            raise InvalidSourceError(
                _slice_path(raw, source),
                f"label column '{key}' clashes with a manifest column",
                "rename the column in the label table or leave it out with labels.columns",
            )
        row[key] = value
    return row


def _stack_store(
    columns: dict[str, list[np.ndarray]], rows: list[dict[str, Any]], size: int, window: tuple[float, float]
) -> SliceStore:
    n_slices = len(rows)
    arrays = {"image": np.stack(columns["image"]).astype(np.float16)}
    masks = iter(columns["mask"])
    hus = iter(columns["hu"])
    lowqs = iter(columns["image_lowq"])
    if any(row["has_mask"] for row in rows):
        arrays["mask"] = np.zeros((n_slices, size, size), dtype=np.uint8)
    if any(row["has_hu"] for row in rows):
        arrays["hu"] = np.full((n_slices, size, size), AIR_HU, dtype=np.int16)
    if any(row["has_lowq"] for row in rows):
        # Slices without a twin keep their clean image, flagged by has_lowq = False.
        arrays["image_lowq"] = arrays["image"].copy()
    for index, row in enumerate(rows):
        if row["has_mask"]:
            arrays["mask"][index] = next(masks)
        if row["has_hu"]:
            arrays["hu"][index] = next(hus)
        if row["has_lowq"]:
            arrays["image_lowq"][index] = next(lowqs)
    attributes = {"image_size": size, "window_level_hu": window[0], "window_width_hu": window[1]}
    return SliceStore(arrays=arrays, attributes=attributes)


def _build_manifest(rows: list[dict[str, Any]]) -> pd.DataFrame:
    manifest = pd.DataFrame(rows)
    label_columns = [column for column in manifest.columns if column not in MANIFEST_COLUMNS]
    manifest = manifest[MANIFEST_COLUMNS + label_columns]
    for column in ("slice_id", "patient_id", "volume_id", "source", "source_kind"):
        manifest[column] = manifest[column].astype("string")
    for column in label_columns:
        # Mixed sources give mixed label types; text keeps Parquet happy and IDs intact.
        if manifest[column].dtype == object:
            manifest[column] = manifest[column].astype("string")
    if manifest["slice_id"].duplicated().any():
        duplicated = manifest.loc[manifest["slice_id"].duplicated(), "source"].unique().tolist()
        raise InvalidSourceError(
            ", ".join(duplicated),
            "two slices received the same slice_id",
            "give each source a unique name and make sure no file is declared twice",
        )
    return manifest
