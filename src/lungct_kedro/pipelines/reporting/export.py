"""Building blocks of the LungCT-Multi export: subset rules, PNG encoding and tables.

Every function reads the slice store and the manifest and returns data; none
writes files. The node assembles their results into one mapping of relative
paths to file contents, which ``ExportFolderDataset`` writes atomically.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

SPLITS = ("train", "val", "test")

#: Mask class index → label name, as nnU-Net's dataset.json expects them.
MASK_LABELS = {"background": 0, "ground_glass_opacity": 1, "consolidation": 2}


def encode_png(array: np.ndarray) -> bytes:
    """Encode a 2-D uint8 or uint16 array as a grayscale PNG."""
    if array.ndim != 2 or array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"PNG export needs a 2-D uint8 or uint16 array, got {array.dtype} of shape {array.shape}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def quantise_image(image: np.ndarray, bit_depth: int) -> np.ndarray:
    """Map windowed intensities in [0, 1] to 8-bit or 16-bit integers (rounded, clipped)."""
    if bit_depth not in (8, 16):
        raise ValueError(f"reporting.export.image_bit_depth is {bit_depth}; allowed: 8 or 16")
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    scaled = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0) * np.iinfo(dtype).max
    return np.rint(scaled).astype(dtype)


def image_png(array: np.ndarray, index: int, bit_depth: int) -> Callable[[], bytes]:
    """Return a function that encodes row ``index`` of a store array when called."""
    return lambda: encode_png(quantise_image(array[index], bit_depth))


def mask_png(array: np.ndarray, index: int) -> Callable[[], bytes]:
    """Return a function that encodes row ``index`` of a mask array when called."""
    return lambda: encode_png(np.asarray(array[index], dtype=np.uint8))


def select_sources(manifest: pd.DataFrame, sources: Iterable[str] | None) -> pd.DataFrame:
    """Keep the rows of the named sources; ``None`` keeps every source."""
    if sources is None:
        return manifest
    wanted = list(sources)
    unknown = sorted(set(wanted) - set(manifest["source"]))
    if unknown:
        raise ValueError(f"sources {unknown} are not in the manifest; known: {sorted(set(manifest['source']))}")
    return manifest[manifest["source"].isin(wanted)]


def label_strings(manifest: pd.DataFrame, label_column: str) -> pd.Series:
    """Return the label of each row as a string, or NA where it is missing."""
    if label_column not in manifest.columns:
        return pd.Series(pd.NA, index=manifest.index, dtype="object")
    # Object dtype first: an all-missing string column would otherwise map to a null-typed series.
    labels = manifest[label_column].astype(object)
    return pd.Series(
        [pd.NA if pd.isna(value) else str(value) for value in labels], index=manifest.index, dtype="object"
    )


def select_classification(manifest: pd.DataFrame, classification: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split the classification sources into labeled and unlabeled slices.

    Labeled: every slice, in any split, whose ``label_column`` value is one of
    ``classes``; the ``label`` column contains that class. Unlabeled: the
    train-split slices of the same sources without such a label. (The
    classification pipeline's Mean Teacher pool is larger, because it also
    takes labeled train slices that no label budget drew.)
    """
    rows = select_sources(manifest, classification.get("sources"))
    labels = label_strings(rows, classification["label_column"])
    classes = [str(name) for name in classification["classes"]]
    is_labeled = labels.isin(classes).fillna(False).astype(bool)
    labeled = rows[is_labeled].assign(label=labels[is_labeled])
    unlabeled = rows[~is_labeled & (rows["split"] == "train")]
    return labeled, unlabeled


def select_pretraining(manifest: pd.DataFrame, pretraining: dict[str, Any]) -> pd.DataFrame:
    """Return the train-split slices of ``pretraining.sources`` (labels are ignored)."""
    rows = select_sources(manifest, pretraining.get("sources"))
    return rows[rows["split"] == "train"]


def check_dehazing_pairs(subset: pd.DataFrame, pair_slice_ids: list[str] | None, n_pairs: int) -> None:
    """Check that each subset row's ``pair_index`` names its own slice in the pairs store.

    Raises:
        ValueError: An index is out of range or names another slice, which
            means the subset and the pairs come from different curation runs.
    """
    for slice_id, pair_index in zip(subset["slice_id"], subset["pair_index"]):
        in_range = 0 <= int(pair_index) < n_pairs
        if not in_range or (pair_slice_ids is not None and pair_slice_ids[int(pair_index)] != slice_id):
            raise ValueError(
                f"dehazing slice {slice_id} is not at row {pair_index} of dehazing_pairs, so the subset and "
                "the pairs come from different curation runs; rerun curation (kedro run --pipeline=curation)"
            )


def clinical_info(manifest: pd.DataFrame, clinical_columns: list[str]) -> pd.DataFrame:
    """Return one row per pseudonymous patient: source, slice count and clinical columns present.

    A clinical column is kept only where the manifest has it. A patient's
    value is the most frequent non-missing one among its slices. Slices
    without a patient ID have no row.
    """
    present = [column for column in clinical_columns if column in manifest.columns]
    grouped = manifest.groupby("patient_id", sort=True)
    table = pd.DataFrame(
        {
            "source": grouped["source"].agg(lambda values: ";".join(sorted(set(map(str, values))))),
            "n_slices": grouped.size(),
        }
    )
    for column in present:
        table[column] = grouped[column].agg(_most_frequent)
    return table.reset_index()


def _most_frequent(values: pd.Series) -> Any:
    counts = values.dropna().astype(str).value_counts()
    return counts.index[0] if len(counts) else pd.NA


def public_slice_table(manifest: pd.DataFrame, excluded_columns: list[str]) -> pd.DataFrame:
    """Return the manifest without the columns listed as not for publication."""
    kept = [column for column in manifest.columns if column not in set(excluded_columns)]
    return manifest[kept].sort_values("slice_id").reset_index(drop=True)


def csv_bytes(table: pd.DataFrame) -> bytes:
    """Encode a table as UTF-8 CSV without the index."""
    return table.to_csv(index=False, lineterminator="\n").encode("utf-8")


def json_bytes(document: Any) -> bytes:
    """Encode a document as indented UTF-8 JSON."""
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def monai_datalist(segmentation: pd.DataFrame) -> dict[str, list[dict[str, str]]]:
    """Return a MONAI datalist with ``training``, ``validation`` and ``test`` lists.

    Paths are relative to the ``segmentation/`` folder that contains the datalist,
    which is where ``monai.data.load_decathlon_datalist`` resolves them.
    """
    keys = {"train": "training", "val": "validation", "test": "test"}
    datalist: dict[str, list[dict[str, str]]] = {key: [] for key in keys.values()}
    for row in segmentation.sort_values("slice_id").itertuples():
        datalist[keys[row.split]].append(
            {"image": f"images/{row.slice_id}.png", "label": f"masks/{row.slice_id}.png"}
        )
    return datalist


def nnunet_dataset_json(n_training: int, licence: str) -> dict[str, Any]:
    """Return the ``dataset.json`` of an nnU-Net v2 raw dataset of 2-D PNG slices."""
    return {
        "name": "LungCTMulti",
        "description": "LungCT-Multi lesion segmentation: ground-glass opacity and consolidation on axial lung CT slices",
        "channel_names": {"0": "CT"},
        "labels": dict(MASK_LABELS),
        "numTraining": n_training,
        "file_ending": ".png",
        "licence": licence,
    }


def split_counts(rows: pd.DataFrame) -> dict[str, int]:
    """Count rows per split, with ``total`` first."""
    counts = {"total": len(rows)}
    for split in SPLITS:
        counts[split] = int((rows["split"] == split).sum())
    return counts
