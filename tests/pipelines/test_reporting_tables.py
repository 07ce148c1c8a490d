"""Tests of the LungCT-Multi paper tables: contents from hand-made inputs, Markdown and LaTeX, a phantom run."""

from __future__ import annotations

import copy
import io
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from kedro.framework.session import KedroSession
from kedro.io import DatasetError

from lungct_kedro.datasets import AtomicParquetDataset, AtomicTextDataset
from lungct_kedro.pipelines.reporting.tables import (
    classification_results_table,
    column_alignment,
    composition_table,
    dehazing_results_table,
    escape_latex,
    format_classification_table,
    format_composition_table,
    format_dehazing_table,
    format_pretraining_table,
    format_segmentation_table,
    format_severity_table,
    pretraining_results_table,
    render_latex,
    render_markdown,
    segmentation_results_table,
    severity_table,
    write_classification_table,
    write_dehazing_table,
    write_pretraining_table,
    write_segmentation_table,
    write_severity_table,
)
from lungct_kedro.pipelines.reporting.tables_pipeline import TABLE_NAMES, create_tables_pipeline
from tests.pipelines.conftest import TINY_PARAMS

CLASSIFICATION = {"label_column": "severity", "classes": ["ordinary", "severe", "critical"], "sources": None}
PRETRAINING = {"sources": None}
DESCRIPTIONS = {"ordinary": "mild", "severe": "progressing", "critical": "failing"}
PAPER = {
    "segmentation": {"dice": 0.714, "model": "a Swin Transformer"},
    "classification": {"accuracy_pct": 86.0, "labeled_slices": 27, "unlabeled_slices": 1244},
    "pretraining": {"max_relative_improvement_pct": 42.2},
}
LABELS = {"mean_teacher": "Mean Teacher", "fine_tune": "fine-tuning", "input": "degraded input", "phantom_twin": "twin"}
TABLE_PARAMS = {"paper": PAPER, "labels": LABELS}


def make_manifest() -> pd.DataFrame:
    """Six slices: patient p1 twice in train, p2 in val, p3 in test, p4 in train, one train slice without patient.

    Column types are those of the Parquet manifest: ``string`` patient IDs, ``str`` labels.
    """
    return pd.DataFrame(
        {
            "slice_id": ["s1", "s2", "s3", "s4", "s5", "s6"],
            "patient_id": pd.array(["p1", "p1", "p2", "p3", None, "p4"], dtype="string"),
            "source": ["a", "a", "a", "a", "b", "a"],
            "split": ["train", "train", "val", "test", "train", "train"],
            "has_mask": [True, True, True, False, True, False],
            "severity": ["severe", "severe", None, "critical", None, "ordinary"],
        }
    )


def make_dehazing_subset() -> pd.DataFrame:
    """Two variants of s1 (train) and one pair of s4 (test)."""
    return pd.DataFrame(
        {
            "slice_id": ["s1", "s1", "s4"],
            "variant": ["lowq", "clean", "lowq"],
            "split": ["train", "train", "test"],
            "patient_id": ["p1", "p1", "p3"],
        }
    )


def segmentation_metrics(**overrides) -> dict:
    metrics = {
        "target": "multiclass",
        "n_slices": 16,
        "n_slices_with_lesion": 15,
        "dice_mean": 0.75341,
        "dice_std": 0.28603,
        "dice_pooled": 0.86082,
        "iou_mean": 0.66249,
        "hd95_px_mean": 18.4126,
        "dice_pooled_ggo": 0.77634,
        "dice_pooled_consolidation": 0.84870,
    }
    metrics.update(overrides)
    return metrics


def classification_metrics() -> dict:
    def scores(mean, std):
        return {"mean": mean, "std": std}

    return {
        "label_column": "severity",
        "classes": ["ordinary", "severe", "critical"],
        "evaluation_split": "test",
        "n_evaluation_slices": 16,
        "classes_absent_from_evaluation": ["ordinary"],
        "results": {
            "total=27": {
                "supervised": {
                    "n_runs": 3,
                    "n_labeled": 27,
                    "accuracy": scores(0.4375, 0.225347),
                    "balanced_accuracy": scores(0.5, 0.1),
                    "macro_f1": scores(0.359596, 0.192259),
                },
                "mean_teacher": {
                    "n_runs": 1,
                    "n_labeled": 27,
                    "accuracy": scores(0.625, 0.0),
                    "balanced_accuracy": scores(0.625, 0.0),
                    "macro_f1": scores(0.563636, 0.0),
                },
            }
        },
    }


def transfer_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "init": ["scratch", "pretrained", "scratch", "pretrained"],
            "mode": ["linear_probe", "linear_probe", "fine_tune", "fine_tune"],
            "label_budget": ["total=27"] * 4,
            "n_labeled": [27] * 4,
            "n_runs": [3] * 4,
            "accuracy_mean": [1 / 3, 0.4791667, 0.0, 0.40625],
            "accuracy_std": [0.2886751, 0.0360844, 0.0, 0.1],
            "accuracy_change_abs": [0.0, 0.1458333, 0.0, 0.40625],
            "accuracy_change_rel_pct": [0.0, 43.75, 0.0, float("nan")],
        }
    )


def segmentation_transfer_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "task": ["segmentation"] * 2,
            "init": ["scratch", "pretrained"],
            "mode": ["fine_tune"] * 2,
            "n_runs": [1, 1],
            "dice_mean": [0.7874062, 0.7948285],
            "dice_std": [0.0, 0.0],
            "dice_pooled_mean": [0.856, 0.844],
            "dice_change_abs": [0.0, 0.0074223],
            "dice_change_rel_percent": [0.0, 0.9426225],
            "train_slices": [64, 64],
            "test_slices": [16, 16],
            "iterations": [150, 150],
            "seeds": ["0", "0"],
        }
    )


def dehazing_metrics() -> dict:
    def scores(psnr, psnr_std, psnr_change, ssim, ssim_std, ssim_change):
        return {
            "psnr_db_mean": psnr,
            "psnr_db_std": psnr_std,
            "psnr_change_db_mean": psnr_change,
            "ssim_mean": ssim,
            "ssim_std": ssim_std,
            "ssim_change_mean": ssim_change,
        }

    return {
        "data_range": 1.0,
        "architecture": "dncnn",
        "reference_sets": {
            "phantom_twin": {
                "n_pairs": 16,
                "methods": {
                    "input": scores(27.605565, 4.217918, 0.0, 0.805419, 0.053510, 0.0),
                    "clahe": scores(16.838109, 1.694259, -10.767457, 0.476469, 0.058610, -0.328949),
                    "network": scores(29.710333, 1.686585, 2.104768, 0.942766, 0.016668, 0.137347),
                },
            }
        },
        "no_reference": {"n_slices": 0, "methods": {}},
    }


def rows_by(display: pd.DataFrame, column: str) -> dict[str, dict]:
    return {row[column]: row for row in display.to_dict(orient="records")}


# ---------- LaTeX structure ----------

_UNESCAPED_AMPERSAND = re.compile(r"(?<!\\)&")


def check_latex_structure(tex: str, n_columns: int) -> None:
    """Check booktabs rules, balanced environments and the cell count of every row."""
    for environment in ("table", "tabular"):
        assert tex.count(rf"\begin{{{environment}}}") == 1, environment
        assert tex.count(rf"\end{{{environment}}}") == 1, environment
    assert tex.index(r"\begin{table}") < tex.index(r"\begin{tabular}") < tex.index(r"\end{tabular}") < tex.index(r"\end{table}")
    column_format = re.search(r"\\begin\{tabular\}\{([lcr]+)\}", tex)
    assert column_format is not None
    assert len(column_format.group(1)) == n_columns
    assert tex.count(r"\toprule") == 1
    assert tex.count(r"\midrule") == 1
    assert tex.count(r"\bottomrule") == 1
    body = tex[tex.index(r"\toprule") + len(r"\toprule") : tex.index(r"\bottomrule")]
    rows = [line for line in body.splitlines() if line.strip() and line.strip() != r"\midrule"]
    assert rows, "the tabular has no rows"
    for row in rows:
        assert row.rstrip().endswith(r"\\"), row
        assert len(_UNESCAPED_AMPERSAND.findall(row)) == n_columns - 1, row
    braces = re.sub(r"\\[{}]", "", tex)
    assert braces.count("{") == braces.count("}")


def check_markdown_structure(markdown: str, n_columns: int) -> None:
    rows = [line for line in markdown.splitlines() if line.startswith("|")]
    assert len(rows) >= 3
    for row in rows:
        cells = re.split(r"(?<!\\)\|", row)[1:-1]
        assert len(cells) == n_columns, row


# ---------- Table 1 ----------


def test_composition_counts_per_subset_and_split():
    table = composition_table(make_manifest(), make_dehazing_subset(), CLASSIFICATION, PRETRAINING).set_index("subset")
    expected = {
        # subset: (slices total, train, val, test, patients total, train, val, test)
        "segmentation": (4, 3, 1, 0, 2, 1, 1, 0),
        "classification (labeled)": (4, 3, 0, 1, 3, 2, 0, 1),
        "classification (unlabeled)": (1, 1, 0, 0, 0, 0, 0, 0),
        "pre-training": (4, 4, 0, 0, 2, 2, 0, 0),
        "dehazing (pairs)": (3, 2, 0, 1, 2, 1, 0, 1),
        "all slices": (6, 4, 1, 1, 4, 2, 1, 1),
    }
    assert list(table.index) == list(expected)
    columns = ["slices", "slices_train", "slices_val", "slices_test", "patients", "patients_train", "patients_val", "patients_test"]
    for subset, counts in expected.items():
        assert tuple(table.loc[subset, columns]) == counts, subset


def test_composition_display_cells():
    values = composition_table(make_manifest(), make_dehazing_subset(), CLASSIFICATION, PRETRAINING)
    display = rows_by(format_composition_table(values), "subset")
    assert list(format_composition_table(values).columns) == ["subset", "total", "train", "validation", "test"]
    assert display["segmentation"]["total"] == "4 (2)"
    assert display["segmentation"]["test"] == "0 (0)"
    assert display["all slices"]["train"] == "4 (2)"
    # No patient ID in the subset: slices only.
    assert display["classification (unlabeled)"]["total"] == "1"


def test_composition_respects_sources():
    classification = {**CLASSIFICATION, "sources": ["b"]}
    table = composition_table(make_manifest(), make_dehazing_subset(), classification, {"sources": ["a"]})
    table = table.set_index("subset")
    assert table.loc["classification (labeled)", "slices"] == 0
    assert table.loc["classification (unlabeled)", "slices"] == 1
    assert table.loc["pre-training", "slices"] == 3


def test_composition_missing_column_names_dataset():
    with pytest.raises(ValueError, match=r"split_manifest has no column\(s\) \['has_mask'\]"):
        composition_table(make_manifest().drop(columns="has_mask"), make_dehazing_subset(), CLASSIFICATION, PRETRAINING)
    with pytest.raises(ValueError, match="dehazing_subset.*kedro run --pipeline=curation"):
        composition_table(make_manifest(), make_dehazing_subset().drop(columns="split"), CLASSIFICATION, PRETRAINING)


# ---------- Table 2 ----------


def test_severity_counts_shares_and_descriptions():
    manifest = make_manifest()
    manifest["severity"] = ["severe", "severe", None, "critical", None, "moderate"]
    table = severity_table(manifest, CLASSIFICATION, DESCRIPTIONS)
    assert table["grade"].tolist() == ["ordinary", "severe", "critical", "moderate", "no grade", "total"]
    assert table["slices"].tolist() == [0, 2, 1, 1, 2, 6]
    assert table["patients"].tolist() == [0, 1, 1, 1, 1, 4]
    display = rows_by(format_severity_table(table), "severity")
    assert display["severe"]["slices (%)"] == "33.3"
    assert display["severe"]["patients (%)"] == "25.0"
    assert display["severe"]["clinical description"] == "progressing"
    assert display["moderate"]["clinical description"] == "not described"
    assert display["ordinary"]["slices"] == "0"
    assert display["total"]["slices (%)"] == "100.0"


def test_severity_without_column_says_so():
    csv, markdown, latex = write_severity_table(
        make_manifest().drop(columns="severity"), CLASSIFICATION, {"severity_descriptions": DESCRIPTIONS}
    )
    assert "no severity grades" in csv
    assert "no severity grades" in markdown
    assert r"\texttt{severity}" in latex
    check_latex_structure(latex, 1)


def test_severity_all_missing_says_so():
    manifest = make_manifest().assign(severity=[None] * 6)
    _, markdown, _ = write_severity_table(manifest, CLASSIFICATION, {"severity_descriptions": DESCRIPTIONS})
    assert "no severity grades" in markdown


# ---------- results tables ----------


def test_segmentation_rows_and_paper_reference():
    values = segmentation_results_table(segmentation_metrics(), PAPER["segmentation"])
    display = rows_by(format_segmentation_table(values), "metric")
    assert display["Dice, mean over slices"]["this run"] == "0.753 ± 0.286"
    assert display["Dice, pooled over test pixels"]["this run"] == "0.861"
    assert display["Dice of ground-glass opacity, pooled"]["this run"] == "0.776"
    assert display["Dice of consolidation, pooled"]["this run"] == "0.849"
    assert display["HD95 (px), mean over slices"]["this run"] == "18.4"
    assert display["test slices"]["this run"] == "16"
    paper_rows = [row for row in display.values() if row["paper"] != "–"]
    assert len(paper_rows) == 1
    assert paper_rows[0]["paper"] == "0.714"
    assert paper_rows[0]["this run"] == "–"


def test_segmentation_binary_has_no_class_rows():
    metrics = segmentation_metrics()
    del metrics["dice_pooled_ggo"], metrics["dice_pooled_consolidation"]
    values = segmentation_results_table(metrics, PAPER["segmentation"])
    assert "dice_pooled_ggo" not in set(values["metric"])
    assert "dice_pooled" in set(values["metric"])


def test_segmentation_missing_key_names_fix():
    metrics = segmentation_metrics()
    del metrics["dice_pooled"]
    with pytest.raises(ValueError, match=r"dice_pooled.*kedro run --pipeline=segmentation"):
        segmentation_results_table(metrics, PAPER["segmentation"])


def test_classification_percentages_and_paper_row():
    values = classification_results_table(classification_metrics(), PAPER["classification"])
    display = format_classification_table(values, LABELS)
    supervised, mean_teacher, paper = display.to_dict(orient="records")
    assert supervised["accuracy (%)"] == "43.8 ± 22.5"
    assert supervised["balanced accuracy (%)"] == "50.0 ± 10.0"
    assert supervised["macro-F1 (%)"] == "36.0 ± 19.2"
    assert supervised["runs"] == "3"
    # A single run has no spread to show.
    assert mean_teacher["accuracy (%)"] == "62.5"
    assert mean_teacher["method"] == "Mean Teacher"
    assert paper["source"] == "paper"
    assert paper["accuracy (%)"] == "86.0"
    assert paper["labeled"] == "27"
    assert paper["unlabeled"] == "1244"
    assert paper["balanced accuracy (%)"] == "–"


def test_pretraining_pairs_scratch_and_pretrained():
    values = pretraining_results_table(transfer_table(), segmentation_transfer_table(), PAPER["pretraining"])
    display = format_pretraining_table(values, LABELS)
    assert column_alignment(display) == ["l", "l", "l", "l", "l", "r", "r", "r", "r", "r"]
    assert len(display) == 4
    linear, fine_tune, segmentation, paper = display.to_dict(orient="records")
    assert linear["scratch"] == "33.3 ± 28.9"
    assert linear["pre-trained"] == "47.9 ± 3.6"
    assert linear["change"] == "+14.6 pp"
    assert linear["relative change"] == "+43.8 %"
    assert linear["mode"] == "linear probe"
    # A scratch mean of 0 has no relative change.
    assert fine_tune["relative change"] == "n/a"
    assert fine_tune["mode"] == "fine-tuning"
    assert segmentation["metric"] == "Dice, mean over slices"
    assert segmentation["scratch"] == "0.787"
    assert segmentation["pre-trained"] == "0.795"
    assert segmentation["change"] == "+0.007"
    assert segmentation["relative change"] == "+0.9 %"
    assert paper["source"] == "paper"
    assert paper["relative change"] == "up to +42.2 %"


def test_pretraining_half_missing_is_noted():
    _, markdown, _ = write_pretraining_table(transfer_table(), None, TABLE_PARAMS)
    assert "Segmentation transfer not run yet: run `kedro run --pipeline=pretraining`" in markdown
    assert "| classification |" in markdown


def test_dehazing_formats_psnr_and_ssim():
    values = dehazing_results_table(dehazing_metrics())
    display = format_dehazing_table(values, LABELS, "dncnn")
    rows = rows_by(display, "method")
    assert list(rows) == ["degraded input", "clahe", "network (dncnn)"]
    assert rows["degraded input"]["PSNR (dB)"] == "27.61 ± 4.22"
    assert rows["degraded input"]["SSIM"] == "0.805 ± 0.054"
    assert rows["clahe"]["Δ PSNR (dB)"] == "-10.77"
    assert rows["network (dncnn)"]["Δ SSIM"] == "+0.137"
    assert rows["network (dncnn)"]["reference set"] == "twin"
    assert rows["network (dncnn)"]["pairs"] == "16"


def test_dehazing_without_reference_sets():
    metrics = {**dehazing_metrics(), "reference_sets": {}}
    _, markdown, _ = write_dehazing_table(metrics, TABLE_PARAMS)
    assert "no reference pairs were scored" in markdown


@pytest.mark.parametrize(
    ("write", "inputs", "pipeline"),
    [
        (write_segmentation_table, [None], "segmentation"),
        (write_classification_table, [None], "classification"),
        (write_pretraining_table, [None, None], "pretraining"),
        (write_dehazing_table, [None], "dehazing"),
    ],
)
def test_missing_metrics_give_not_run_table(write, inputs, pipeline):
    csv, markdown, latex = write(*inputs, TABLE_PARAMS)
    message = f"not run yet: run `kedro run --pipeline={pipeline}`"
    assert pd.read_csv(io.StringIO(csv))["status"].tolist() == [message]
    assert message in markdown
    assert rf"not run yet: run \texttt{{kedro run --pipeline={pipeline}}}" in latex
    check_latex_structure(latex, 1)


# ---------- rendering ----------


def test_escape_latex_special_characters():
    assert escape_latex("dice_mean") == r"dice\_mean"
    assert escape_latex("43.8 %") == r"43.8 \%"
    assert escape_latex("0.753 ± 0.286") == r"0.753 $\pm$ 0.286"
    assert escape_latex("a & b # {c}") == r"a \& b \# \{c\}"
    assert escape_latex("C:\\x") == r"C:\textbackslash{}x"
    assert escape_latex("Δ PSNR") == r"$\Delta$ PSNR"
    assert escape_latex("run `kedro_run`") == r"run \texttt{kedro\_run}"


def test_latex_table_escapes_and_is_balanced():
    display = pd.DataFrame(
        {"metric_name": ["dice_mean", "accuracy (%)"], "value": ["0.753 ± 0.286", "86.0"], "note": ["a_b", "5 %"]}
    )
    latex = render_latex(display, "Results of run_1", "tab:results", ["Share in %."])
    check_latex_structure(latex, 3)
    assert r"\begin{tabular}{lrl}" in latex
    assert r"metric\_name & value & note \\" in latex
    assert r"dice\_mean & 0.753 $\pm$ 0.286 & a\_b \\" in latex
    assert r"accuracy (\%) & 86.0 & 5 \% \\" in latex
    assert r"\caption{Results of run\_1. Share in \%.}" in latex
    assert r"\label{tab:results}" in latex
    # Below the leading comment line, no special character is left unescaped.
    assert latex.startswith("% ")
    body = latex.split("\n", 1)[1].replace(r"\label{tab:results}", "")
    assert "±" not in body
    assert not re.search(r"(?<!\\)_", body)
    assert not re.search(r"(?<!\\)%", body)


def test_markdown_table_alignment_and_pipes():
    display = pd.DataFrame({"method": ["a|b", "c"], "score": ["0.500 ± 0.100", "–"]})
    markdown = render_markdown(display, "Scores", ["One note.", "Two notes."])
    lines = markdown.splitlines()
    assert lines[0] == "## Scores"
    assert lines[2] == "| method | score |"
    assert lines[3] == "|---|---:|"
    assert lines[4] == r"| a\|b | 0.500 ± 0.100 |"
    assert lines[-1] == "One note. Two notes."
    check_markdown_structure(markdown, 2)


def test_atomic_text_dataset_keeps_previous_on_bad_save(tmp_path):
    dataset = AtomicTextDataset(str(tmp_path / "tables" / "t.md"))
    assert not dataset.exists()
    dataset.save("first\n")
    assert dataset.load() == "first\n"
    with pytest.raises(DatasetError, match="takes text"):
        dataset.save(b"bytes")
    assert dataset.load() == "first\n"
    assert [path.name for path in (tmp_path / "tables").iterdir()] == ["t.md"]


# ---------- pipeline run on the phantom ----------


def tiny_params() -> dict:
    params = copy.deepcopy(TINY_PARAMS)
    params["curation"] = {"figures": {"n_examples": 2, "panel_size_in": 2.0}}
    return params


def run_export_and_tables(project: Path, params: dict) -> None:
    """Run the export and table nodes of the reporting pipeline (not the notebooks)."""
    node_names = ["export_lungct_multi", *(node.name for node in create_tables_pipeline().nodes)]
    with KedroSession.create(project_path=project, runtime_params=params) as session:
        session.run(pipeline_names=["reporting"], node_names=node_names)


@pytest.mark.slow
def test_tables_run_on_phantom(kedro_project, run_pipelines):
    run_pipelines(["ingestion", "splits", "curation"], params=tiny_params())
    run_export_and_tables(kedro_project, tiny_params())
    folder = kedro_project / "data" / "08_reporting" / "tables"

    expected = {f"{name}.{suffix}" for name in TABLE_NAMES for suffix in ("csv", "md", "tex")} | {"paper_tables.md"}
    assert {path.name for path in folder.iterdir()} == expected

    manifest = AtomicParquetDataset(str(kedro_project / "data" / "05_model_input" / "split_manifest.parquet")).load()
    composition = pd.read_csv(folder / "composition.csv").set_index("subset")
    assert composition.loc["all slices", "slices"] == len(manifest)
    for split in ["train", "val", "test"]:
        assert composition.loc["all slices", f"slices_{split}"] == int((manifest["split"] == split).sum()), split
        assert composition.loc["all slices", f"patients_{split}"] == manifest.loc[manifest["split"] == split, "patient_id"].nunique()
    assert composition.loc["segmentation", "slices"] == int(manifest["has_mask"].sum())

    # The same subset rules as the export, so the same counts.
    summary = json.loads((kedro_project / "data" / "08_reporting" / "lungct_multi_export_summary.json").read_text())
    for subset, counts in summary["subsets"].items():
        for key, column in [("total", "slices"), ("train", "slices_train"), ("val", "slices_val"), ("test", "slices_test")]:
            assert composition.loc[subset, column] == counts[key], (subset, key)

    severity = pd.read_csv(folder / "severity.csv").set_index("grade")
    assert severity.loc["total", "slices"] == len(manifest)
    graded = manifest[manifest["severity"].notna()]
    for grade in ["ordinary", "severe", "critical"]:
        assert severity.loc[grade, "slices"] == int((graded["severity"] == grade).sum()), grade

    # The task pipelines did not run, so their tables name the command.
    for name, pipeline in [("segmentation", "segmentation"), ("classification", "classification"), ("pretraining", "pretraining"), ("dehazing", "dehazing")]:
        assert f"not run yet: run `kedro run --pipeline={pipeline}`" in (folder / f"{name}.md").read_text()

    for name in TABLE_NAMES:
        markdown = (folder / f"{name}.md").read_text()
        n_columns = len(markdown.splitlines()[2].split(" | "))
        check_markdown_structure(markdown, n_columns)
        check_latex_structure((folder / f"{name}.tex").read_text(), n_columns)

    combined = (folder / "paper_tables.md").read_text()
    for name in TABLE_NAMES:
        assert (folder / f"{name}.md").read_text().strip() in combined, name
