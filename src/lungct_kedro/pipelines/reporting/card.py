"""The dataset card (``DATASET_CARD.md``) of the LungCT-Multi export."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from lungct_kedro.pipelines.reporting.export import SPLITS, split_counts

logger = logging.getLogger(__name__)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """Render a GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def composition_section(subsets: dict[str, pd.DataFrame]) -> str:
    """Render the slice counts of each subset per split."""
    rows = []
    for name, table in subsets.items():
        counts = split_counts(table)
        rows.append([name, counts["total"], *(counts[split] for split in SPLITS)])
    return "## Composition\n\nSlices per subset and split.\n\n" + markdown_table(
        ["subset", "total", *SPLITS], rows
    )


def severity_section(manifest: pd.DataFrame, descriptions: dict[str, str]) -> str:
    """Render patients and slices per severity grade with each grade's clinical description."""
    title = "## Severity distribution\n\n"
    if "severity" not in manifest.columns or manifest["severity"].isna().all():
        return title + "No slice of this export has a severity grade.\n"
    rows = []
    graded = manifest[manifest["severity"].notna()]
    grades = list(descriptions) + sorted(set(graded["severity"].astype(str)) - set(descriptions))
    for grade in grades:
        of_grade = graded[graded["severity"].astype(str) == grade]
        rows.append([grade, of_grade["patient_id"].nunique(), len(of_grade), descriptions.get(grade, "not described")])
    return title + markdown_table(["grade", "patients", "slices", "clinical description"], rows)


def sources_section(manifest: pd.DataFrame, licences: dict[str, str]) -> str:
    """Render patients, slices and the licence of each source."""
    rows = []
    for source, rows_of_source in manifest.groupby("source", sort=True):
        licence = licences.get(source)
        if licence is None:
            logger.warning("No licence for source %s in reporting.source_licences; the card says 'not stated'", source)
            licence = "not stated"
        kind = ";".join(sorted(set(rows_of_source["source_kind"].astype(str))))
        rows.append([source, kind, rows_of_source["patient_id"].nunique(), len(rows_of_source), licence])
    return "## Sources and licences\n\n" + markdown_table(["source", "kind", "patients", "slices", "licence"], rows)


def preprocessing_section(store_attributes: dict[str, Any], bit_depth: int) -> str:
    """Render the slice size and lung window recorded by ingestion."""
    size = store_attributes.get("image_size", "not recorded")
    level = store_attributes.get("window_level_hu", "not recorded")
    width = store_attributes.get("window_width_hu", "not recorded")
    return (
        "## Preprocessing\n\n"
        f"- Every slice is resampled to {size} × {size} pixels.\n"
        f"- Intensities are windowed to the lung window (level {level} HU, width {width} HU), "
        f"scaled to [0, 1] and stored as {bit_depth}-bit grayscale PNG (0 = window minimum, "
        f"{2 ** bit_depth - 1} = window maximum). Sources without Hounsfield units (8-bit JPEG exports) "
        "were already windowed by their publisher and are rescaled only.\n"
        "- Masks are 8-bit PNG class maps: 0 background, 1 ground-glass opacity, 2 consolidation.\n"
        "- Identifiers are keyed-hash pseudonyms (`pat-…`, `vol-…`, `sl-…`); original patient IDs, "
        "file names and DICOM header fields are not exported.\n"
    )


RULES_SECTION = """## Subset rules

- `segmentation/`: every slice that has a mask, in its split; lesion-free slices have all-zero masks.
- `classification/labeled/<class>/`: every slice of the classification sources whose label
  (`{label_column}`) is one of {classes}, in any split; `metadata/splits/` gives the split.
- `classification/unlabeled/`: the train-split slices of the classification sources without such a
  label. Val and test slices without a label are not exported there. The classification
  pipeline's Mean Teacher pool also takes the labeled train slices not drawn into a label budget.
- `pre-training/`: every train-split slice of the pre-training sources ({pretraining_sources});
  labels are ignored.
- `dehazing/`: the curated low-quality subset; `hazy/<slice_id>_<variant>.png` is the low-quality slice
  and `enhanced/<slice_id>_<variant>.png` its enhanced reference (variant `lowq` = simulated low-dose
  twin, `clean` = the slice itself).
- `nnunet/` and `segmentation/datalist.json` hold the segmentation subset again, laid out for
  nnU-Net v2 and MONAI.
"""

USES_SECTION = """## Intended uses

Research and teaching on lung lesion segmentation, few-shot and semi-supervised severity or
diagnosis classification, self-supervised pre-training and low-dose CT enhancement. Not for
clinical diagnosis or for any decision about a patient.
"""


def _names(sources: list[str]) -> str:
    return ", ".join(f"`{source}`" for source in sources)


def limitations_section(manifest: pd.DataFrame) -> str:
    """Render the known limitations that follow from the manifest."""
    items = []
    synthetic = sorted(set(manifest.loc[manifest["source_kind"] == "phantom", "source"]))
    if synthetic:
        items.append(
            f"Sources {_names(synthetic)} are synthetic phantoms generated by this project; they test the pipeline "
            "and do not show how models perform on patients."
        )
    slice_level = sorted(
        source
        for source, rows in manifest.groupby("source", sort=True)
        if "split_group" in rows.columns and (rows["split_group"] == rows["slice_id"]).all()
    )
    if slice_level:
        items.append(
            f"Sources {_names(slice_level)} have no patient or volume IDs, so their slices are split one by one; "
            "slices of one patient may fall into different splits."
        )
    if "has_hu" in manifest.columns:
        no_hu = sorted(set(manifest.loc[~manifest["has_hu"].astype(bool), "source"]))
        if no_hu:
            items.append(f"Sources {_names(no_hu)} come without Hounsfield units, so their window is the publisher's.")
    items.append("Slices are 2-D; volumes are not exported, and slice spacing is in `metadata/slices.csv` only.")
    if len(set(manifest["patient_id"])) < 20:
        items.append(
            f"The export holds {manifest['patient_id'].nunique()} patients, too few for reliable estimates of "
            "model performance."
        )
    return "## Known limitations\n\n" + "\n".join(f"- {item}" for item in items) + "\n"


def render_dataset_card(
    manifest: pd.DataFrame,
    subsets: dict[str, pd.DataFrame],
    store_attributes: dict[str, Any],
    reporting: dict[str, Any],
    classification: dict[str, Any],
    pretraining: dict[str, Any],
) -> str:
    """Render ``DATASET_CARD.md`` from the manifest, the subsets and the store attributes."""
    rules = RULES_SECTION.format(
        label_column=classification["label_column"],
        classes=", ".join(f"`{name}`" for name in classification["classes"]),
        pretraining_sources="every source" if pretraining.get("sources") is None else ", ".join(pretraining["sources"]),
    )
    sections = [
        "# LungCT-Multi dataset card\n\n"
        "LungCT-Multi gathers axial lung CT slices for four tasks: lesion segmentation, severity "
        "classification, self-supervised pre-training and dehazing (low-dose enhancement). This folder was "
        "written by the `reporting` pipeline of lungct_kedro from its slice store; `checksums.sha256` lists "
        "the SHA-256 of every file (check with `sha256sum -c checksums.sha256`).\n",
        composition_section(subsets),
        severity_section(manifest, reporting["severity_descriptions"]),
        sources_section(manifest, reporting["source_licences"]),
        preprocessing_section(store_attributes, reporting["export"]["image_bit_depth"]),
        rules,
        USES_SECTION,
        limitations_section(manifest),
    ]
    return "\n\n".join(section.rstrip("\n") for section in sections) + "\n"
