"""Summary table, Markdown report and saved outputs of the segmentation methods benchmark."""

from __future__ import annotations

import datetime
import io
import os
import platform
from collections.abc import Mapping
from pathlib import Path

import monai
import pandas as pd
import torch
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from segmentation_methods_setup import METHODS, PreparedDataset, Settings, working_directory

from lungct_kedro.training.cross_validation import methods_beating_reference, summarise_cross_validation

#: The plain U-Nets every method is measured against: the pipeline's own (the default to
#: beat) and the same network trained by the minimal loop outside the pipeline.
REFERENCE_METHODS = ("unet", "minimal_unet")
DOCS_MARKER = "segmentation-methods"
DOCS_START = f"<!-- {DOCS_MARKER}:start -->"
DOCS_END = f"<!-- {DOCS_MARKER}:end -->"


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Summarise completed runs and list skipped or failed methods beneath, with their reason in ``note``."""
    completed = runs[runs["status"] == "ok"]
    table = summarise_cross_validation(completed)
    table["note"] = ""
    others = runs[runs["status"] != "ok"][["dataset", "method", "status", "note"]]
    extra = pd.DataFrame(
        {
            "dataset": others["dataset"],
            "method": others["method"],
            "note": others["status"] + ": " + others["note"],
        }
    )
    return ordered_by_method(pd.concat([table, extra], ignore_index=True))


def ordered_by_method(table: pd.DataFrame) -> pd.DataFrame:
    """Sort rows by dataset, then in the order of ``METHODS``, the cheapest baselines first."""
    order = {method.name: position for position, method in enumerate(METHODS)}
    table = table.assign(_order=table["method"].map(order))
    return table.sort_values(["dataset", "_order"], kind="stable").drop(columns="_order").reset_index(drop=True)


def markdown_report(table: pd.DataFrame, prepared: Mapping[str, PreparedDataset], settings: Settings) -> str:
    """Write the protocol, the table and the verdict as Markdown."""
    machine = (
        f"{cpu_model()}, {os.cpu_count()} CPU cores, {settings.threads} torch threads, "
        f"torch {torch.__version__}, MONAI {monai.__version__}"
    )
    lines = [
        f"Measured {datetime.date.today().isoformat()} with `benchmarks/segmentation_methods.py"
        f"{' --quick` (a smoke test, not a result)' if settings.quick else '`'} on {machine}; CPU only.",
        "",
        f"Protocol: {settings.folds}-fold cross-validation grouped by patient, else volume, else slice; "
        f"seeds {', '.join(str(seed) for seed in settings.seeds)} (each seed reshuffles the folds and seeds "
        f"the training); a validation part of {settings.val_fraction:.0%} of the training folds' groups for "
        f"checkpoint selection; {settings.cpu_budget_s:g} s of process CPU time per training run; "
        f"{settings.image_size} px slices. Dice is that of the lesion mask (any class) against background "
        "on the held-out fold: per-slice mean and pooled over the fold's pixels, averaged over folds for "
        "each seed, then mean ± sample std over seeds. `cpu_seconds` is the mean per run, training and "
        "test prediction together.",
        "",
    ]
    for name, dataset in prepared.items():
        lines.append(
            f"* {name}: {len(dataset.labeled)} labeled slices in {dataset.groups.nunique()} groups "
            f"({', '.join(dataset.spec.labeled_sources)}), {len(dataset.unlabeled_rows)} unlabeled slices "
            f"({', '.join(dataset.spec.unlabeled_sources)}) for Mean Teacher and the encoder; "
            f"self-supervised encoder: {dataset.encoder_note}; data preparation took "
            f"{dataset.prepare_seconds:.0f} s."
        )
    lines += [
        "",
        "| dataset | method | folds | seeds | runs | dice_mean ± std | dice_pooled ± std | cpu_seconds | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in ordered_by_method(table).itertuples():
        # A table read back from CSV has NaN where a note was empty.
        note = "" if pd.isna(row.note) else row.note
        if pd.isna(row.dice_mean):
            lines.append(f"| {row.dataset} | {row.method} | | | | | | | {note} |")
            continue
        lines.append(
            f"| {row.dataset} | {row.method} | {int(row.folds)} | {int(row.seeds)} | {int(row.runs)} | "
            f"{row.dice_mean:.3f} ± {row.dice_mean_std:.3f} | {row.dice_pooled:.3f} ± {row.dice_pooled_std:.3f} | "
            f"{row.cpu_seconds:.0f} | {note} |"
        )
    lines += ["", *verdict_lines(table, settings)]
    return "\n".join(lines) + "\n"


def verdict_lines(table: pd.DataFrame, settings: Settings) -> list[str]:
    """Name, per dataset, the methods that beat each plain U-Net by more than the seed spread."""
    completed = table.dropna(subset=["dice_mean"])
    lines = []
    for reference in REFERENCE_METHODS:
        comparison = methods_beating_reference(completed, reference)
        for dataset in completed["dataset"].unique():
            part = comparison[comparison["dataset"] == dataset]
            if part.empty:
                lines.append(f"Verdict, {dataset}: no {reference} result, so no method is compared with it.")
                continue
            if len(settings.seeds) < 2:
                lines.append(f"Verdict, {dataset}: one seed gives no spread between seeds; run with two or more seeds.")
                continue
            winners = part[part["beats"]].sort_values("gain", ascending=False)
            if winners.empty:
                best = part.sort_values("gain", ascending=False).iloc[0]
                lines.append(
                    f"Verdict, {dataset}: no method beats the plain U-Net ({reference}) by more than the seed "
                    f"spread; closest: {best['method']} ({best['gain']:+.3f} Dice, spread {best['spread']:.3f})."
                )
            else:
                names = "; ".join(
                    f"{row.method} ({row.gain:+.3f} Dice, spread {row.spread:.3f})" for row in winners.itertuples()
                )
                lines.append(
                    f"Verdict, {dataset}: beating the plain U-Net ({reference}) by more than the seed spread: {names}."
                )
            lines.append("")
    return lines


def cpu_model() -> str:
    """Return the CPU model name from ``/proc/cpuinfo`` on Linux, else the machine type."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def replace_docs_section(text: str, section: str, path: Path, marker: str = DOCS_MARKER) -> str:
    """Replace the text between the segmentation-methods markers of a Markdown document.

    Raises:
        ValueError: The markers are missing or out of order.
    """
    opening, closing = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    start, end = text.find(opening), text.find(closing)
    if start == -1 or end == -1 or end < start:
        raise ValueError(
            f"{path} has no section between {opening} and {closing}; add the two markers, each on its own line, "
            "where the table should go"
        )
    return text[: start + len(opening)] + "\n" + section.rstrip("\n") + "\n" + text[end:]


def merge_results(previous: str | None, current: pd.DataFrame) -> pd.DataFrame:
    """Replace the rows of ``current``'s (dataset, method) pairs in a previously saved CSV, keep the others.

    Datasets, or single methods, can be benchmarked in separate commands; the
    saved tables then hold the latest result of every dataset and method.
    """
    if not previous:
        return current
    earlier = pd.read_csv(io.StringIO(previous))
    if not {"dataset", "method"} <= set(earlier.columns):
        return current
    rerun = pd.MultiIndex.from_frame(current[["dataset", "method"]])
    unchanged = earlier[~pd.MultiIndex.from_frame(earlier[["dataset", "method"]]).isin(rerun)]
    if unchanged.empty:
        return current
    return pd.concat([unchanged, current], ignore_index=True)


def save_outputs(runs: pd.DataFrame, table: pd.DataFrame, project_path: Path) -> pd.DataFrame:
    """Save the runs and the table through the project's Kedro catalog, merged with the saved ones.

    Rows of (dataset, method) pairs that this command did not run are kept
    from the saved files. Returns the saved table.
    """
    bootstrap_project(project_path)
    with working_directory(project_path), KedroSession.create(project_path=project_path) as session:
        catalog = session.load_context().catalog
        saved = {}
        for name, frame in (("segmentation_methods_runs", runs), ("segmentation_methods_table", table)):
            previous = catalog.load(name) if catalog.exists(name) else None
            saved[name] = merge_results(previous, frame)
            catalog.save(name, saved[name].to_csv(index=False))
    return saved["segmentation_methods_table"]


def load_saved_table(project_path: Path) -> pd.DataFrame:
    """Load the saved summary table through the project's Kedro catalog.

    Raises:
        FileNotFoundError: No comparison has been saved yet.
    """
    bootstrap_project(project_path)
    with working_directory(project_path), KedroSession.create(project_path=project_path) as session:
        catalog = session.load_context().catalog
        if not catalog.exists("segmentation_methods_table"):
            raise FileNotFoundError(
                "no saved segmentation_methods_table to report; run benchmarks/segmentation_methods.py without "
                "--report-only first"
            )
        return pd.read_csv(io.StringIO(catalog.load("segmentation_methods_table")))


def save_markdown(markdown: str, project_path: Path) -> None:
    """Save the Markdown report through the project's Kedro catalog."""
    with working_directory(project_path), KedroSession.create(project_path=project_path) as session:
        session.load_context().catalog.save("segmentation_methods_markdown", markdown)
