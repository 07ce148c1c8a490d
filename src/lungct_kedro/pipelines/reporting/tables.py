"""Tables of the LungCT-Multi paper, built from the pipelines' outputs and rendered as CSV, Markdown and LaTeX.

The LungCT-Multi paper introduces the dataset, describes its composition in
Tables 1 and 2, and reports baselines that the results tables show in a
``paper`` row. Every table goes through three pure steps:

1. ``*_table`` functions turn the split manifest or a metric file into a
   numeric DataFrame, which is written as CSV.
2. ``format_*`` functions turn that into a DataFrame of display strings.
   Dice, IoU and SSIM get 3 decimals, accuracy in percent 1, and PSNR in dB
   2. A value averaged over repeats or slices shows mean ± std.
3. ``render_markdown`` and ``render_latex`` turn display strings into text.

The ``write_*`` node functions at the end chain the three steps. A task
whose metric file is missing (``None`` from ``OptionalDataset``) gets a
one-cell table that names the command to run.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from lungct_kedro.pipelines.reporting.export import (
    SPLITS,
    select_classification,
    select_pretraining,
    select_sources,
    split_counts,
)

logger = logging.getLogger(__name__)

#: Shown in a cell that has no value.
MISSING = "–"

SPLIT_HEADERS = {"train": "train", "val": "validation", "test": "test"}

#: Row of the composition table that counts every slice of the manifest once.
ALL_SLICES = "all slices"


@dataclass(frozen=True)
class TableSpec:
    """Title and LaTeX label of one table."""

    title: str
    label: str


TABLES: dict[str, TableSpec] = {
    "composition": TableSpec("Table 1: LungCT-Multi dataset composition and splits", "tab:composition"),
    "severity": TableSpec("Table 2: Clinical severity distribution in the classification subset", "tab:severity"),
    "segmentation": TableSpec("Segmentation results on the test split", "tab:segmentation"),
    "classification": TableSpec("Few-shot classification results", "tab:classification"),
    "pretraining": TableSpec("Pre-training: training from scratch against the pre-trained encoder", "tab:pretraining"),
    "dehazing": TableSpec("Dehazing results against the clean reference", "tab:dehazing"),
}


# ---------- input checks and number formats ----------


def _require_columns(table: pd.DataFrame, columns: Iterable[str], dataset: str, fix: str) -> None:
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise ValueError(f"{dataset} has no column(s) {missing}, so {fix}")


def _require_keys(document: Mapping[str, Any], keys: Iterable[str], dataset: str, pipeline: str) -> None:
    missing = [key for key in keys if key not in document]
    if missing:
        raise ValueError(
            f"{dataset} has no key(s) {missing}, so an older version of the {pipeline} pipeline wrote it. "
            f"Rerun it: kedro run --pipeline={pipeline}"
        )


def _is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def fixed(value: Any, digits: int) -> str:
    """Format a number with ``digits`` decimals, or return the missing-value dash."""
    return MISSING if _is_missing(value) else f"{float(value):.{digits}f}"


def signed(value: Any, digits: int, suffix: str = "") -> str:
    """Format a change with an explicit sign (``+0.007``), or ``n/a`` when it is undefined."""
    return "n/a" if _is_missing(value) else f"{float(value):+.{digits}f}{suffix}"


def mean_std(mean: Any, std: Any, digits: int, repeated: bool = True) -> str:
    """Format ``mean ± std``, or only the mean when there is a single value or no std."""
    if _is_missing(mean):
        return MISSING
    if not repeated or _is_missing(std):
        return fixed(mean, digits)
    return f"{float(mean):.{digits}f} ± {float(std):.{digits}f}"


def count(value: Any) -> str:
    """Format a count, or return the missing-value dash."""
    return MISSING if _is_missing(value) else str(int(value))


def display_label(key: str, labels: Mapping[str, str]) -> str:
    """Return the display name of a method, set or mode key, or the key with spaces for underscores."""
    return str(labels.get(key, str(key).replace("_", " ")))


def not_run_table(pipeline: str) -> pd.DataFrame:
    """Return the one-cell table that replaces the results of a pipeline not run yet."""
    return pd.DataFrame({"status": [f"not run yet: run `kedro run --pipeline={pipeline}`"]})


def status_table(message: str) -> pd.DataFrame:
    """Return a one-cell table that states why a table has no rows."""
    return pd.DataFrame({"status": [message]})


# ---------- Table 1: composition and splits ----------


def composition_subsets(
    manifest: pd.DataFrame,
    dehazing_subset: pd.DataFrame,
    classification: Mapping[str, Any],
    pretraining: Mapping[str, Any],
) -> dict[str, pd.DataFrame]:
    """Return the rows of each published subset, by the same rules as the export.

    The names are the keys of ``subsets`` in ``lungct_multi_export_summary.json``.
    The last entry, ``all slices``, is the whole manifest.
    """
    labeled, unlabeled = select_classification(manifest, dict(classification))
    return {
        "segmentation": manifest[manifest["has_mask"].astype(bool)],
        "classification (labeled)": labeled,
        "classification (unlabeled)": unlabeled,
        "pre-training": select_pretraining(manifest, dict(pretraining)),
        "dehazing (pairs)": dehazing_subset,
        ALL_SLICES: manifest,
    }


def _patient_counts(rows: pd.DataFrame) -> dict[str, int]:
    patients = rows["patient_id"]
    counts = {"total": int(patients.dropna().nunique())}
    for split in SPLITS:
        counts[split] = int(patients[(rows["split"] == split).fillna(False).astype(bool)].dropna().nunique())
    return counts


def composition_table(
    manifest: pd.DataFrame,
    dehazing_subset: pd.DataFrame,
    classification: Mapping[str, Any],
    pretraining: Mapping[str, Any],
) -> pd.DataFrame:
    """Count slices and patients per subset and split.

    Args:
        manifest: The split manifest (``slice_id``, ``source``, ``split``,
            ``has_mask``, ``patient_id`` and the classification label column).
        dehazing_subset: The curated low-quality pairs, with ``split`` and ``patient_id``.
        classification: The ``classification`` parameters (label column, classes, sources).
        pretraining: The ``pretraining`` parameters (sources).

    Returns:
        One row per subset: ``subset``, ``slices`` and ``slices_<split>``,
        ``patients`` and ``patients_<split>``. Patients are distinct
        pseudonymous IDs, and slices without one count as slices only.

    Raises:
        ValueError: A needed column is missing.
    """
    _require_columns(
        manifest,
        ["slice_id", "source", "split", "has_mask", "patient_id"],
        "split_manifest",
        "rerun ingestion and splits: kedro run --pipelines=ingestion,splits",
    )
    _require_columns(
        dehazing_subset, ["split", "patient_id"], "dehazing_subset", "rerun curation: kedro run --pipeline=curation"
    )
    rows = []
    for name, subset in composition_subsets(manifest, dehazing_subset, classification, pretraining).items():
        slices = split_counts(subset)
        patients = _patient_counts(subset)
        row: dict[str, Any] = {"subset": name, "slices": slices["total"]}
        row.update({f"slices_{split}": slices[split] for split in SPLITS})
        row["patients"] = patients["total"]
        row.update({f"patients_{split}": patients[split] for split in SPLITS})
        rows.append(row)
    return pd.DataFrame(rows)


def format_composition_table(table: pd.DataFrame) -> pd.DataFrame:
    """Show each split as ``slices (patients)``, or slices only for a subset without patient IDs."""
    display = pd.DataFrame({"subset": table["subset"]})
    for key, header in [("", "total"), *((f"_{split}", SPLIT_HEADERS[split]) for split in SPLITS)]:
        display[header] = [
            f"{row[f'slices{key}']} ({row[f'patients{key}']})" if row["patients"] > 0 else str(row[f"slices{key}"])
            for row in table.to_dict(orient="records")
        ]
    return display


def composition_notes(classification: Mapping[str, Any]) -> list[str]:
    """Explain the cells and the subset rules of Table 1."""
    classes = ", ".join(str(name) for name in classification["classes"])
    return [
        "Each cell gives slices (patients with a pseudonymous ID), or slices only for a subset without IDs.",
        f"Labeled classification slices have a `{classification['label_column']}` value among {classes}, "
        "in any split.",
        "Unlabeled classification and pre-training slices come from the train split only.",
        "Dehazing counts hazy/enhanced pairs, and one slice can give two (its simulated low-dose twin and itself).",
        "The subsets overlap, so they do not add up to all slices.",
    ]


# ---------- Table 2: severity distribution ----------


def has_severity_grades(manifest: pd.DataFrame) -> bool:
    """Tell whether the manifest has a ``severity`` column with at least one grade."""
    return "severity" in manifest.columns and bool(manifest["severity"].notna().any())


def _share_pct(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole > 0 else math.nan


def severity_table(
    manifest: pd.DataFrame, classification: Mapping[str, Any], descriptions: Mapping[str, str]
) -> pd.DataFrame:
    """Count patients and slices per severity grade in the classification subset.

    The subset is every slice, in any split, of ``classification.sources``
    (every source when null). Grades follow the order of ``descriptions``,
    then grades without a description follow in alphabetical order. A ``no grade``
    row counts slices without a grade, and a ``total`` row closes the table.

    Returns:
        Columns ``grade``, ``patients``, ``patients_pct``, ``slices``,
        ``slices_pct`` and ``description``. Shares are percentages of the
        subset's patients and slices. A patient whose slices carry two grades
        counts in both rows.

    Raises:
        ValueError: The manifest has no ``severity``, ``patient_id`` or ``source`` column.
    """
    _require_columns(
        manifest,
        ["severity", "patient_id", "source"],
        "split_manifest",
        "rerun ingestion and splits: kedro run --pipelines=ingestion,splits",
    )
    scope = select_sources(manifest, classification.get("sources"))
    is_graded = scope["severity"].notna().to_numpy(dtype=bool)
    grades = scope["severity"].map(str).where(is_graded, None)
    n_patients = int(scope["patient_id"].dropna().nunique())
    n_slices = len(scope)

    def row(grade: str, rows: pd.DataFrame, description: str) -> dict[str, Any]:
        patients = int(rows["patient_id"].dropna().nunique())
        return {
            "grade": grade,
            "patients": patients,
            "patients_pct": _share_pct(patients, n_patients),
            "slices": len(rows),
            "slices_pct": _share_pct(len(rows), n_slices),
            "description": description,
        }

    # A described grade without slices still gets its row of zeros, so the table lists every grade.
    ordered = [*descriptions, *sorted(set(grades[is_graded]) - set(descriptions))]
    rows = []
    for grade in ordered:
        of_grade = (grades == grade).fillna(False).to_numpy(dtype=bool)
        rows.append(row(grade, scope[of_grade], descriptions.get(grade, "not described")))
    if not is_graded.all():
        rows.append(row("no grade", scope[~is_graded], MISSING))
    rows.append(row("total", scope, "all slices of the classification subset"))
    return pd.DataFrame(rows)


def format_severity_table(table: pd.DataFrame) -> pd.DataFrame:
    """Show counts as integers and shares in percent with 1 decimal."""
    return pd.DataFrame(
        {
            "severity": table["grade"],
            "patients": table["patients"].map(count),
            "patients (%)": table["patients_pct"].map(lambda value: fixed(value, 1)),
            "slices": table["slices"].map(count),
            "slices (%)": table["slices_pct"].map(lambda value: fixed(value, 1)),
            "clinical description": table["description"],
        }
    )


def severity_notes(classification: Mapping[str, Any]) -> list[str]:
    """Explain the scope of Table 2."""
    sources = classification.get("sources")
    scope = "every source" if sources is None else "the sources " + ", ".join(f"`{name}`" for name in sources)
    return [
        f"Slices of {scope}, in every split. Patients are distinct pseudonymous IDs.",
        "A patient whose slices carry two grades counts in both rows.",
    ]


# ---------- segmentation results ----------

#: Metric key, row label, key of its standard deviation, decimals. Rows whose key is absent are left out.
SEGMENTATION_ROWS: list[tuple[str, str, str | None, int]] = [
    ("n_slices", "test slices", None, 0),
    ("n_slices_with_lesion", "test slices with lesion", None, 0),
    ("dice_mean", "Dice, mean over slices", "dice_std", 3),
    ("dice_pooled", "Dice, pooled over test pixels", None, 3),
    ("dice_pooled_ggo", "Dice of ground-glass opacity, pooled", None, 3),
    ("dice_pooled_consolidation", "Dice of consolidation, pooled", None, 3),
    ("iou_mean", "IoU, mean over slices", None, 3),
    ("hd95_px_mean", "HD95 (px), mean over slices", None, 1),
]

#: Row key of the Dice that the LungCT-Multi paper reports without stating how it averages.
PAPER_DICE = "dice_reported"


def segmentation_results_table(metrics: Mapping[str, Any], paper: Mapping[str, Any]) -> pd.DataFrame:
    """List the test metrics of ``segmentation_metrics.json`` beside the Dice of the LungCT-Multi paper.

    Returns:
        Columns ``metric`` (the JSON key), ``label``, ``this_run``,
        ``this_run_std`` and ``paper``. The LungCT-Multi Dice gets its own
        row, because the LungCT-Multi paper does not state whether it averages
        over slices or pools pixels.

    Raises:
        ValueError: The metrics lack ``n_slices``, ``dice_mean`` or ``dice_pooled``.
    """
    _require_keys(metrics, ["n_slices", "dice_mean", "dice_pooled"], "segmentation_metrics", "segmentation")
    rows = []
    for key, label, std_key, _ in SEGMENTATION_ROWS:
        if key in metrics:
            std = metrics.get(std_key) if std_key else None
            rows.append({"metric": key, "label": label, "this_run": metrics[key], "this_run_std": std, "paper": None})
    rows.append(
        {
            "metric": PAPER_DICE,
            "label": "Dice as reported, averaging not stated",
            "this_run": None,
            "this_run_std": None,
            "paper": float(paper["dice"]),
        }
    )
    # Object dtype keeps counts as integers in the CSV beside the fractional metrics.
    table = pd.DataFrame(rows, dtype=object)
    return table.astype({"this_run_std": float, "paper": float})


def format_segmentation_table(table: pd.DataFrame) -> pd.DataFrame:
    """Show Dice and IoU with 3 decimals, HD95 with 1 and counts as integers."""
    digits = {key: decimals for key, _, _, decimals in SEGMENTATION_ROWS}
    digits[PAPER_DICE] = 3
    this_run, paper = [], []
    for row in table.to_dict(orient="records"):
        places = digits[row["metric"]]
        if places == 0:
            this_run.append(count(row["this_run"]))
        else:
            this_run.append(mean_std(row["this_run"], row["this_run_std"], places))
        paper.append(fixed(row["paper"], places))
    return pd.DataFrame({"metric": table["label"], "this run": this_run, "paper": paper})


def segmentation_notes(metrics: Mapping[str, Any], paper: Mapping[str, Any]) -> list[str]:
    """Explain the metrics and the model behind the LungCT-Multi paper's Dice."""
    target = metrics.get("target", "lesion")
    return [
        f"Lesion mask (any class) of the test split, {target} model, mean ± std over test slices.",
        "A slice whose reference and prediction are both empty scores Dice 1.",
        f"LungCT-Multi paper: {paper['model']}.",
    ]


# ---------- classification results ----------


#: Metrics of the classification table, with their column headers.
CLASSIFICATION_METRICS = {
    "accuracy": "accuracy (%)",
    "balanced_accuracy": "balanced accuracy (%)",
    "macro_f1": "macro-F1 (%)",
}


def classification_results_table(metrics: Mapping[str, Any], paper: Mapping[str, Any]) -> pd.DataFrame:
    """List accuracy, balanced accuracy and macro-F1 per label budget and method, and the LungCT-Multi accuracy.

    Args:
        metrics: ``classification_metrics.json``: ``results[budget][method]``
            with ``n_runs``, ``n_labeled`` and ``{mean, std}`` per metric.
        paper: ``reporting_tables.paper.classification``.

    Returns:
        Columns ``source`` (``this run`` or ``paper``), ``budget``,
        ``n_labeled``, ``n_unlabeled``, ``method``, ``n_runs`` and
        ``<metric>_pct_mean`` / ``<metric>_pct_std`` in percent.

    Raises:
        ValueError: The metrics have no ``results`` mapping, or a result lacks
            ``n_runs``, ``n_labeled`` or ``accuracy``.
    """
    _require_keys(metrics, ["results"], "classification_metrics", "classification")
    rows = []
    for budget, methods in metrics["results"].items():
        for method, entry in methods.items():
            where = f"classification_metrics results[{budget}][{method}]"
            _require_keys(entry, ["n_runs", "n_labeled", "accuracy"], where, "classification")
            row: dict[str, Any] = {
                "source": "this run",
                "budget": budget,
                "n_labeled": entry["n_labeled"],
                "n_unlabeled": None,
                "method": method,
                "n_runs": entry["n_runs"],
            }
            for metric in CLASSIFICATION_METRICS:
                scores = entry.get(metric, {})
                row[f"{metric}_pct_mean"] = 100.0 * scores["mean"] if "mean" in scores else None
                row[f"{metric}_pct_std"] = 100.0 * scores["std"] if "std" in scores else None
            rows.append(row)
    rows.append(
        {
            "source": "paper",
            "budget": None,
            "n_labeled": paper.get("labeled_slices"),
            "n_unlabeled": paper.get("unlabeled_slices"),
            "method": None,
            "n_runs": None,
            "accuracy_pct_mean": float(paper["accuracy_pct"]),
        }
    )
    columns = ["source", "budget", "n_labeled", "n_unlabeled", "method", "n_runs"]
    columns += [f"{metric}_pct_{statistic}" for metric in CLASSIFICATION_METRICS for statistic in ("mean", "std")]
    return pd.DataFrame(rows, columns=columns).astype({"n_labeled": "Int64", "n_unlabeled": "Int64", "n_runs": "Int64"})


def format_classification_table(table: pd.DataFrame, labels: Mapping[str, str]) -> pd.DataFrame:
    """Show percentages with 1 decimal, as mean ± std over runs when there are several."""
    display = pd.DataFrame(
        {
            "source": table["source"],
            "label budget": table["budget"].map(lambda value: MISSING if _is_missing(value) else str(value)),
            "labeled": table["n_labeled"].map(count),
            "unlabeled": table["n_unlabeled"].map(count),
            "method": table["method"].map(
                lambda value: MISSING if _is_missing(value) else display_label(value, labels)
            ),
            "runs": table["n_runs"].map(count),
        }
    )
    repeated = [not _is_missing(n_runs) and int(n_runs) > 1 for n_runs in table["n_runs"]]
    for metric, header in CLASSIFICATION_METRICS.items():
        means, stds = table[f"{metric}_pct_mean"], table[f"{metric}_pct_std"]
        display[header] = [mean_std(mean, std, 1, several) for mean, std, several in zip(means, stds, repeated)]
    return display


def classification_notes(metrics: Mapping[str, Any]) -> list[str]:
    """Explain the label column, the evaluation split and the spread."""
    classes = ", ".join(str(name) for name in metrics.get("classes", []))
    notes = [
        f"Classes of `{metrics.get('label_column', 'unknown')}`: {classes}. Evaluated on the "
        f"{metrics.get('evaluation_split', 'test')} split, {metrics.get('n_evaluation_slices', MISSING)} slices.",
        "Mean ± sample std over label draws × training seeds.",
    ]
    absent = metrics.get("classes_absent_from_evaluation") or []
    if absent:
        notes.append(f"Classes without evaluation slices: {', '.join(map(str, absent))}.")
    notes.append("The LungCT-Multi accuracy comes from its own model, input size and schedule.")
    return notes


# ---------- pre-training results ----------


def _single(rows: pd.DataFrame, column: str) -> Any:
    return rows[column].iloc[0] if len(rows) else None


def _classification_transfer_rows(transfer_table: pd.DataFrame) -> list[dict[str, Any]]:
    _require_columns(
        transfer_table,
        [
            "init", "mode", "label_budget", "n_labeled", "n_runs",
            "accuracy_mean", "accuracy_std", "accuracy_change_abs", "accuracy_change_rel_pct",
        ],
        "transfer_table",
        "rerun pre-training (kedro run --pipeline=pretraining)",
    )
    rows = []
    for (budget, mode), pair in transfer_table.groupby(["label_budget", "mode"], sort=False):
        scratch = pair[pair["init"] == "scratch"]
        pretrained = pair[pair["init"] == "pretrained"]
        rows.append(
            {
                "source": "this run",
                "task": "classification",
                "metric": "accuracy_pct",
                "setting": f"{budget}, {_single(pair, 'n_labeled')} labeled",
                "mode": mode,
                "n_runs": _single(pretrained, "n_runs"),
                "scratch_mean": 100.0 * _single(scratch, "accuracy_mean") if len(scratch) else None,
                "scratch_std": 100.0 * _single(scratch, "accuracy_std") if len(scratch) else None,
                "pretrained_mean": 100.0 * _single(pretrained, "accuracy_mean") if len(pretrained) else None,
                "pretrained_std": 100.0 * _single(pretrained, "accuracy_std") if len(pretrained) else None,
                "change_abs": 100.0 * _single(pretrained, "accuracy_change_abs") if len(pretrained) else None,
                "change_rel_pct": _single(pretrained, "accuracy_change_rel_pct"),
            }
        )
    return rows


def _segmentation_transfer_rows(segmentation_table: pd.DataFrame) -> list[dict[str, Any]]:
    _require_columns(
        segmentation_table,
        [
            "init", "mode", "n_runs", "dice_mean", "dice_std",
            "dice_change_abs", "dice_change_rel_percent", "train_slices", "iterations",
        ],
        "segmentation_transfer_table",
        "rerun pre-training (kedro run --pipeline=pretraining)",
    )
    rows = []
    for mode, pair in segmentation_table.groupby("mode", sort=False):
        scratch = pair[pair["init"] == "scratch"]
        pretrained = pair[pair["init"] == "pretrained"]
        rows.append(
            {
                "source": "this run",
                "task": "segmentation",
                "metric": "dice_mean",
                "setting": f"{_single(pair, 'train_slices')} train slices, {_single(pair, 'iterations')} iterations",
                "mode": mode,
                "n_runs": _single(pretrained, "n_runs"),
                "scratch_mean": _single(scratch, "dice_mean"),
                "scratch_std": _single(scratch, "dice_std"),
                "pretrained_mean": _single(pretrained, "dice_mean"),
                "pretrained_std": _single(pretrained, "dice_std"),
                "change_abs": _single(pretrained, "dice_change_abs"),
                "change_rel_pct": _single(pretrained, "dice_change_rel_percent"),
            }
        )
    return rows


def pretraining_results_table(
    transfer_table: pd.DataFrame | None,
    segmentation_transfer_table: pd.DataFrame | None,
    paper: Mapping[str, Any],
) -> pd.DataFrame:
    """Pair scratch and pre-trained runs per task, budget and mode, with the LungCT-Multi paper's largest gain.

    Args:
        transfer_table: ``transfer_table.csv`` (classification), or ``None``.
        segmentation_transfer_table: ``segmentation_transfer_table.csv``, or ``None``.
        paper: ``reporting_tables.paper.pretraining``.

    Returns:
        Columns ``source``, ``task``, ``metric`` (``accuracy_pct`` in
        percent, or ``dice_mean``), ``setting``, ``mode``, ``n_runs``,
        ``scratch_mean``/``_std``, ``pretrained_mean``/``_std``,
        ``change_abs`` (in the metric's unit, so percentage points for
        accuracy) and ``change_rel_pct`` (in % of the scratch mean). The
        last row is the paper's largest relative improvement.

    Raises:
        ValueError: A table lacks a needed column.
    """
    rows = []
    if transfer_table is not None:
        rows += _classification_transfer_rows(transfer_table)
    if segmentation_transfer_table is not None:
        rows += _segmentation_transfer_rows(segmentation_transfer_table)
    rows.append({"source": "paper", "change_rel_pct": float(paper["max_relative_improvement_pct"])})
    columns = [
        "source", "task", "metric", "setting", "mode", "n_runs", "scratch_mean", "scratch_std",
        "pretrained_mean", "pretrained_std", "change_abs", "change_rel_pct",
    ]
    return pd.DataFrame(rows, columns=columns).astype({"n_runs": "Int64"})


#: Display name, decimals and change unit of each transfer metric.
TRANSFER_METRICS = {"accuracy_pct": ("accuracy (%)", 1, " pp"), "dice_mean": ("Dice, mean over slices", 3, "")}


def format_pretraining_table(table: pd.DataFrame, labels: Mapping[str, str]) -> pd.DataFrame:
    """Show accuracy in percent with 1 decimal and Dice with 3, as mean ± std when runs repeat."""
    records = []
    for row in table.to_dict(orient="records"):
        if row["source"] == "paper":
            records.append({"source": "paper", "relative change": f"up to {signed(row['change_rel_pct'], 1, ' %')}"})
            continue
        name, digits, unit = TRANSFER_METRICS[row["metric"]]
        repeated = not _is_missing(row["n_runs"]) and int(row["n_runs"]) > 1
        records.append(
            {
                "source": row["source"],
                "task": row["task"],
                "metric": name,
                "setting": row["setting"],
                "mode": display_label(row["mode"], labels),
                "runs": count(row["n_runs"]),
                "scratch": mean_std(row["scratch_mean"], row["scratch_std"], digits, repeated),
                "pre-trained": mean_std(row["pretrained_mean"], row["pretrained_std"], digits, repeated),
                "change": signed(row["change_abs"], digits, unit),
                "relative change": signed(row["change_rel_pct"], 1, " %"),
            }
        )
    columns = [
        "source", "task", "metric", "setting", "mode", "runs", "scratch", "pre-trained", "change", "relative change",
    ]
    return pd.DataFrame(records, columns=columns).fillna(MISSING)


def pretraining_notes(
    transfer_table: pd.DataFrame | None, segmentation_transfer_table: pd.DataFrame | None
) -> list[str]:
    """Explain the change columns and name a half that was not written."""
    notes = [
        "Change: pre-trained minus scratch for the same budget and mode (pp = percentage points).",
        "Relative change: in % of the scratch mean, n/a when that mean is 0.",
        "The LungCT-Multi paper does not name the task or metric of its largest relative improvement.",
    ]
    if transfer_table is None:
        notes.append("Classification transfer not run yet: run `kedro run --pipeline=pretraining`.")
    if segmentation_transfer_table is None:
        notes.append("Segmentation transfer not run yet: run `kedro run --pipeline=pretraining`.")
    return notes


# ---------- dehazing results ----------


def dehazing_results_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """List PSNR and SSIM per reference set and method, the degraded input and classical baselines included.

    Returns:
        Columns ``set``, ``n_pairs``, ``method``, ``psnr_db_mean``,
        ``psnr_db_std``, ``psnr_change_db_mean``, ``ssim_mean``, ``ssim_std``
        and ``ssim_change_mean``. The table is empty when no reference set was scored.

    Raises:
        ValueError: The metrics have no ``reference_sets``.
    """
    _require_keys(metrics, ["reference_sets"], "dehazing_metrics", "dehazing")
    columns = ["psnr_db_mean", "psnr_db_std", "psnr_change_db_mean", "ssim_mean", "ssim_std", "ssim_change_mean"]
    rows = []
    for set_name, reference_set in metrics["reference_sets"].items():
        for method, scores in reference_set.get("methods", {}).items():
            row = {"set": set_name, "n_pairs": reference_set.get("n_pairs"), "method": method}
            row.update({column: scores.get(column) for column in columns})
            rows.append(row)
    return pd.DataFrame(rows, columns=["set", "n_pairs", "method", *columns]).astype({"n_pairs": "Int64"})


def format_dehazing_table(table: pd.DataFrame, labels: Mapping[str, str], architecture: str | None) -> pd.DataFrame:
    """Show PSNR in dB with 2 decimals and SSIM with 3, as mean ± std over pairs."""

    def method_name(method: str) -> str:
        name = display_label(method, labels)
        return f"{name} ({architecture})" if method == "network" and architecture else name

    return pd.DataFrame(
        {
            "reference set": table["set"].map(lambda value: display_label(value, labels)),
            "pairs": table["n_pairs"].map(count),
            "method": table["method"].map(method_name),
            "PSNR (dB)": [mean_std(mean, std, 2) for mean, std in zip(table["psnr_db_mean"], table["psnr_db_std"])],
            "Δ PSNR (dB)": table["psnr_change_db_mean"].map(lambda value: signed(value, 2)),
            "SSIM": [mean_std(mean, std, 3) for mean, std in zip(table["ssim_mean"], table["ssim_std"])],
            "Δ SSIM": table["ssim_change_mean"].map(lambda value: signed(value, 3)),
        }
    )


def dehazing_notes(metrics: Mapping[str, Any]) -> list[str]:
    """Explain the intensity scale, the change columns and the no-reference count."""
    notes = [
        f"PSNR and SSIM with data range {metrics.get('data_range', 1.0)} on lung-windowed slices, "
        "mean ± std over pairs.",
        "Δ: method minus the degraded input, per slice, then averaged.",
        "The LungCT-Multi paper reports no PSNR or SSIM values.",
    ]
    no_reference = metrics.get("no_reference", {}).get("n_slices", 0)
    if no_reference:
        notes.append(
            f"{no_reference} flagged slices without a clean reference are scored in `dehazing_metrics.json` only."
        )
    return notes


# ---------- rendering ----------

_NUMBER_START = re.compile(r"^(?:up to )?[+\-−]?\d")
_RIGHT_ALIGNED = re.compile(rf"^(?:(?:up to )?[+\-−]?\d|{MISSING}$|n/a$)")


def column_alignment(display: pd.DataFrame) -> list[str]:
    """Return ``r`` for columns of numbers (``up to`` a number, a dash and ``n/a`` included), else ``l``."""
    alignment = []
    for column in display.columns:
        cells = [str(cell) for cell in display[column]]
        has_number = any(_NUMBER_START.match(cell) for cell in cells)
        numeric = has_number and all(_RIGHT_ALIGNED.match(cell) for cell in cells)
        alignment.append("r" if numeric else "l")
    return alignment


def _markdown_cell(value: Any) -> str:
    return str(value).replace("\n", " ").replace("|", "\\|")


def render_markdown(display: pd.DataFrame, title: str, notes: Iterable[str] = ()) -> str:
    """Render a display table as a GitHub-flavoured Markdown section with a ``##`` title and notes below."""
    alignment = column_alignment(display)
    lines = [
        f"## {title}",
        "",
        "| " + " | ".join(_markdown_cell(column) for column in display.columns) + " |",
        "|" + "|".join("---:" if side == "r" else "---" for side in alignment) + "|",
    ]
    for row in display.itertuples(index=False):
        lines.append("| " + " | ".join(_markdown_cell(cell) for cell in row) + " |")
    notes = list(notes)
    if notes:
        lines += ["", " ".join(notes)]
    return "\n".join(lines) + "\n"


#: LaTeX replacements of the characters that are special in text mode.
_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}

#: Non-ASCII characters of the tables, written so that pdfLaTeX needs no Unicode input setup.
_LATEX_UNICODE = {
    "±": r"$\pm$",
    "×": r"$\times$",
    "Δ": r"$\Delta$",
    "−": r"$-$",
    "–": "--",
    "—": "---",
    "≤": r"$\leq$",
    "≥": r"$\geq$",
}


def escape_latex(text: Any) -> str:
    """Escape text for a LaTeX table cell or caption, turning Markdown code spans into ``\\texttt``."""
    escaped = "".join(_LATEX_SPECIALS.get(char, _LATEX_UNICODE.get(char, char)) for char in str(text))
    return re.sub(r"`([^`]*)`", r"\\texttt{\1}", escaped)


def render_latex(display: pd.DataFrame, title: str, label: str, notes: Iterable[str] = ()) -> str:
    """Render a display table as a booktabs ``table`` float, with the notes after the title in the caption.

    The output needs ``\\usepackage{booktabs}`` in the preamble.
    """
    escaped = display.map(escape_latex)
    escaped.columns = [escape_latex(column) for column in display.columns]
    caption = escape_latex(" ".join([f"{title}.", *notes]))
    body = escaped.style.hide(axis="index").to_latex(
        column_format="".join(column_alignment(display)),
        hrules=True,
        caption=caption,
        label=label,
        position="htbp",
        position_float="centering",
    )
    return "% Written by the lungct_kedro reporting pipeline. Needs \\usepackage{booktabs}.\n" + body


def render_csv(values: pd.DataFrame) -> str:
    """Render the numeric table as CSV without the index."""
    return values.to_csv(index=False, lineterminator="\n")


def render_table(
    spec: TableSpec, values: pd.DataFrame, display: pd.DataFrame, notes: Iterable[str] = ()
) -> tuple[str, str, str]:
    """Render one table as CSV (numeric values), Markdown and LaTeX (display strings)."""
    notes = list(notes)
    return (
        render_csv(values),
        render_markdown(display, spec.title, notes),
        render_latex(display, spec.title, spec.label, notes),
    )


def render_not_run(spec: TableSpec, pipeline: str) -> tuple[str, str, str]:
    """Render the stand-in table of a pipeline whose outputs are missing."""
    logger.info("%s: outputs of the %s pipeline not found, so the table shows 'not run yet'", spec.title, pipeline)
    table = not_run_table(pipeline)
    return render_table(spec, table, table)


def combine_markdown(sections: Iterable[str]) -> str:
    """Join the Markdown tables into one document under a ``#`` title."""
    header = (
        "# LungCT-Multi paper tables\n\n"
        "Written by the `reporting` pipeline from the outputs of the other pipelines. Each table is also "
        "in this folder as CSV (numbers at full precision) and LaTeX (booktabs).\n"
    )
    return "\n".join([header, *(section.rstrip("\n") + "\n" for section in sections)])


# ---------- nodes ----------


def write_composition_table(
    split_manifest: pd.DataFrame,
    dehazing_subset: pd.DataFrame,
    classification: dict[str, Any],
    pretraining: dict[str, Any],
) -> tuple[str, str, str]:
    """Write Table 1, slices and patients per subset and split, as CSV, Markdown and LaTeX."""
    values = composition_table(split_manifest, dehazing_subset, classification, pretraining)
    logger.info("Table 1: %d subsets, %d slices in all", len(values) - 1, int(values["slices"].iloc[-1]))
    display = format_composition_table(values)
    return render_table(TABLES["composition"], values, display, composition_notes(classification))


def write_severity_table(
    split_manifest: pd.DataFrame, classification: dict[str, Any], reporting: dict[str, Any]
) -> tuple[str, str, str]:
    """Write Table 2, patients and slices per severity grade, or a one-cell table when the data has no grades."""
    spec = TABLES["severity"]
    if not has_severity_grades(split_manifest):
        logger.info("Table 2: no severity grade found in the split manifest, so the table has no grade rows")
        table = status_table("no severity grades: no slice of the split manifest has a `severity` value")
        return render_table(spec, table, table)
    values = severity_table(split_manifest, classification, reporting["severity_descriptions"])
    return render_table(spec, values, format_severity_table(values), severity_notes(classification))


def write_segmentation_table(
    segmentation_metrics: dict[str, Any] | None, tables: dict[str, Any]
) -> tuple[str, str, str]:
    """Write the segmentation results beside the LungCT-Multi Dice, or a 'not run yet' table."""
    spec = TABLES["segmentation"]
    if segmentation_metrics is None:
        return render_not_run(spec, "segmentation")
    paper = tables["paper"]["segmentation"]
    values = segmentation_results_table(segmentation_metrics, paper)
    notes = segmentation_notes(segmentation_metrics, paper)
    return render_table(spec, values, format_segmentation_table(values), notes)


def write_classification_table(
    classification_metrics: dict[str, Any] | None, tables: dict[str, Any]
) -> tuple[str, str, str]:
    """Write accuracy per label budget and method beside the LungCT-Multi accuracy, or a 'not run yet' table."""
    spec = TABLES["classification"]
    if classification_metrics is None:
        return render_not_run(spec, "classification")
    values = classification_results_table(classification_metrics, tables["paper"]["classification"])
    display = format_classification_table(values, tables["labels"])
    return render_table(spec, values, display, classification_notes(classification_metrics))


def write_pretraining_table(
    transfer_table: pd.DataFrame | None,
    segmentation_transfer_table: pd.DataFrame | None,
    tables: dict[str, Any],
) -> tuple[str, str, str]:
    """Write scratch against pre-trained per task beside the LungCT-Multi largest gain, or a 'not run yet' table."""
    spec = TABLES["pretraining"]
    if transfer_table is None and segmentation_transfer_table is None:
        return render_not_run(spec, "pretraining")
    values = pretraining_results_table(transfer_table, segmentation_transfer_table, tables["paper"]["pretraining"])
    display = format_pretraining_table(values, tables["labels"])
    return render_table(spec, values, display, pretraining_notes(transfer_table, segmentation_transfer_table))


def write_dehazing_table(dehazing_metrics: dict[str, Any] | None, tables: dict[str, Any]) -> tuple[str, str, str]:
    """Write PSNR and SSIM per reference set and method, or a 'not run yet' table."""
    spec = TABLES["dehazing"]
    if dehazing_metrics is None:
        return render_not_run(spec, "dehazing")
    values = dehazing_results_table(dehazing_metrics)
    if values.empty:
        table = status_table("no reference pairs were scored")
        return render_table(spec, table, table, dehazing_notes(dehazing_metrics))
    display = format_dehazing_table(values, tables["labels"], dehazing_metrics.get("architecture"))
    return render_table(spec, values, display, dehazing_notes(dehazing_metrics))


def combine_paper_tables(*markdown_tables: str) -> str:
    """Write every table into one Markdown document, in the order given."""
    return combine_markdown(markdown_tables)
