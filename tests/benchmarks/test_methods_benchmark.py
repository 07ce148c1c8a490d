"""The segmentation methods benchmark on a tiny in-memory store, and once end to end on a tiny phantom."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import segmentation_methods as harness
from kedro.config import OmegaConfigLoader
from segmentation_methods_report import (
    DOCS_END,
    DOCS_START,
    markdown_report,
    merge_results,
    replace_docs_section,
    summary_table,
)
from segmentation_methods_setup import DatasetSpec, PreparedDataset, deep_merge

from lungct_kedro.datasets.slice_store import SliceStore
from lungct_kedro.training.cross_validation import SUMMARY_COLUMNS, cross_validation_groups
from tests.benchmarks.test_minimal_unet import bright_squares
from tests.conftest import REPO_ROOT
from tests.pipelines.conftest import kedro_project  # noqa: F401  (a fixture)

TOY_METHODS = [
    "threshold_floor",
    "minimal_unet",
    "unet",
    "unet_tta_postprocess",
    "mean_teacher_unet",
    "flexible_unet_resnet18_ssl",
]


def toy_dataset() -> PreparedDataset:
    """Twelve 32 px slices of six patients, no unlabeled slices and no encoder."""
    images, masks = bright_squares(12)
    store = SliceStore(arrays={"image": images.astype(np.float16), "mask": masks})
    manifest = pd.DataFrame(
        {
            "slice_id": [f"slice-{index}" for index in range(12)],
            "store_index": np.arange(12),
            "patient_id": [f"patient-{index // 2}" for index in range(12)],
            "volume_id": [None] * 12,
            "source": ["toy"] * 12,
            "has_mask": [True] * 12,
        }
    )
    loader = OmegaConfigLoader(conf_source=str(REPO_ROOT / "conf"), base_env="base", default_run_env="local")
    params = deep_merge(
        loader["parameters"]["segmentation"],
        {"model": {"channels": [8, 16, 32], "num_res_units": 1}, "training": {"batch_size": 4}},
    )
    spec = DatasetSpec("toy", "base", ("toy",), (), "severity", ("ordinary", "severe"), ("toy",))
    return PreparedDataset(
        spec=spec,
        store=store,
        manifest=manifest,
        labeled=manifest,
        groups=cross_validation_groups(manifest),
        unlabeled_rows=np.zeros(0, dtype=np.int64),
        class_rows=pd.DataFrame(columns=["store_index", "class_index"]),
        segmentation_params=params,
        encoder=None,
        encoder_note="not trained in this test",
        prepare_seconds=0.0,
    )


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):
    settings = harness.parse_settings(
        ["--quick", "--methods", *TOY_METHODS, "--folds", "2", "--seeds", "0", "1", "--cpu-budget-s", "0.5",
         "--scratch-dir", str(tmp_path_factory.mktemp("scratch"))]
    )
    dataset = toy_dataset()
    runs = harness.benchmark_dataset(dataset, settings, harness.Progress(12, 1.0))
    return settings, dataset, runs


def test_every_slice_tested_once_per_seed(toy_runs):
    _, _, runs = toy_runs
    completed = runs[runs["status"] == "ok"]
    assert set(completed["method"]) == {"threshold_floor", "minimal_unet", "unet", "unet_tta_postprocess"}
    for (method, seed), part in completed.groupby(["method", "seed"]):
        assert len(part) == 2, (method, seed)
        assert part["test_slices"].sum() == 12, (method, seed)
        assert (part["train_slices"] + part["val_slices"] + part["test_slices"] == 12).all()


def test_threshold_floor_scores_bright_lesions(toy_runs):
    _, _, runs = toy_runs
    floor = runs[runs["method"] == "threshold_floor"]
    assert (floor["dice_mean"] > 0.9).all()
    assert floor["threshold"].between(0.3, 0.7).all()


def test_trained_runs_spend_budget(toy_runs):
    _, _, runs = toy_runs
    minimal = runs[runs["method"] == "minimal_unet"]
    assert (minimal["cpu_seconds"] >= 0.5).all()
    assert (minimal["iterations"] >= 1).all()
    unet = runs[runs["method"] == "unet"]
    assert (unet["iterations"] >= 1).all()
    assert unet["stopped_by"].isin(["cpu_time_budget", "iterations"]).all()
    assert (unet["cpu_budget_s"] == 0.5).all()


def test_unsupported_methods_listed_with_reason(toy_runs):
    _, _, runs = toy_runs
    reasons = runs[runs["status"] == "skipped"].set_index("method")["note"]
    assert "no unlabeled slices" in reasons["mean_teacher_unet"]
    assert "no pre-trained encoder" in reasons["flexible_unet_resnet18_ssl"]


def test_summary_and_markdown(toy_runs):
    settings, dataset, runs = toy_runs
    table = summary_table(runs)
    assert list(table.columns[: len(SUMMARY_COLUMNS)]) == list(SUMMARY_COLUMNS)
    assert table["method"].tolist() == TOY_METHODS
    scored = table.set_index("method")
    assert scored.loc["unet", "runs"] == 4
    assert scored.loc["unet", "seeds"] == 2
    assert scored["dice_mean"].isna().sum() == 2
    assert scored.loc["mean_teacher_unet", "note"].startswith("skipped: ")

    markdown = markdown_report(table, {"toy": dataset}, settings)
    assert "| toy | threshold_floor | 2 | 2 | 4 |" in markdown
    assert "Verdict, toy:" in markdown
    assert "12 labeled slices in 6 groups" in markdown


def test_docs_section_replaced_between_markers():
    text = f"# Benchmarks\n\nbefore\n{DOCS_START}\nold table\n{DOCS_END}\nafter\n"
    replaced = replace_docs_section(text, "new table\n", None)
    assert replaced == f"# Benchmarks\n\nbefore\n{DOCS_START}\nnew table\n{DOCS_END}\nafter\n"
    with pytest.raises(ValueError, match="add the two markers"):
        replace_docs_section("# Benchmarks\n", "new table\n", "docs/benchmarks.md")


@pytest.mark.slow
def test_quick_run_end_to_end(kedro_project, tmp_path):  # noqa: F811  (the imported fixture)
    docs = tmp_path / "benchmarks.md"
    docs.write_text(f"# Benchmarks\n\nkept\n{DOCS_START}\n{DOCS_END}\n")
    table = harness.main(
        ["--quick", "--datasets", "phantom", "--methods", "threshold_floor", "minimal_unet", "--folds", "2",
         "--seeds", "0", "--cpu-budget-s", "0.3", "--scratch-dir", str(tmp_path / "scratch"),
         "--project-path", str(kedro_project), "--docs-output", str(docs)]
    )
    assert table["method"].tolist() == ["threshold_floor", "minimal_unet"]
    reporting = kedro_project / "data" / "08_reporting"
    saved = pd.read_csv(reporting / "segmentation_methods.csv")
    pd.testing.assert_frame_equal(saved, pd.read_csv(io.StringIO(table.to_csv(index=False))))
    runs = pd.read_csv(reporting / "segmentation_methods_runs.csv")
    assert len(runs) == 4
    assert set(runs["dataset"]) == {"phantom"}
    markdown = (reporting / "segmentation_methods.md").read_text()
    assert "phantom: 18 labeled slices in 6 groups" in markdown
    text = docs.read_text()
    assert text.startswith("# Benchmarks\n\nkept\n")
    assert markdown.strip() in text

    docs.write_text(f"# Benchmarks\n\nkept\n{DOCS_START}\n{DOCS_END}\n")
    harness.main(
        ["--quick", "--datasets", "phantom", "--methods", "threshold_floor", "minimal_unet", "--folds", "2",
         "--seeds", "0", "--cpu-budget-s", "0.3", "--scratch-dir", str(tmp_path / "scratch"),
         "--project-path", str(kedro_project), "--docs-output", str(docs), "--report-only"]
    )
    rewritten = (reporting / "segmentation_methods.md").read_text()
    table_lines = [line for line in markdown.splitlines() if line.startswith("|")]
    assert [line for line in rewritten.splitlines() if line.startswith("|")] == table_lines
    assert rewritten.strip() in docs.read_text()


def test_run_params_keep_rampup_share():
    settings = harness.parse_settings(["--cpu-budget-s", "10"])
    base = {"seed": 1, "device": "auto", "training": {"iterations": 1000}, "mean_teacher": {"rampup_iterations": 200}}
    params, expected = harness.run_params(base, 3, settings, cpu_per_iteration=0.1)
    assert expected == 100
    assert params["seed"] == 3
    assert params["device"] == "cpu"
    assert params["training"]["cpu_time_budget_s"] == 10
    assert params["training"]["iterations"] == 200
    assert params["training"]["validate_every"] == 25
    # 200 of 1000 iterations is a fifth of the run, and stays a fifth of the 200-iteration cap.
    assert params["mean_teacher"]["rampup_iterations"] == 40


def test_merge_results_replaces_rerun_rows():
    previous = pd.DataFrame(
        {"dataset": ["phantom", "real", "real"], "method": ["unet", "unet", "swin_unetr"], "dice_mean": [0.7, 0.5, 0.4]}
    )
    current = pd.DataFrame({"dataset": ["real"], "method": ["unet"], "dice_mean": [0.6]})
    merged = merge_results(previous.to_csv(index=False), current)
    assert merged.set_index(["dataset", "method"])["dice_mean"].to_dict() == {
        ("phantom", "unet"): 0.7,
        ("real", "swin_unetr"): 0.4,
        ("real", "unet"): 0.6,
    }
    assert merge_results(None, current) is current


def test_docs_section_other_marker():
    text = f"{DOCS_START}\nreal\n{DOCS_END}\n<!-- other:start -->\nold\n<!-- other:end -->\n"
    replaced = replace_docs_section(text, "phantom\n", None, marker="other")
    assert replaced == f"{DOCS_START}\nreal\n{DOCS_END}\n<!-- other:start -->\nphantom\n<!-- other:end -->\n"


def test_ema_decay_scaled_to_run():
    from segmentation_methods import scaled_ema_decay

    # 0.99 averages over 100 of 1,000 steps; over a 200-step run the horizon becomes 20 steps.
    assert scaled_ema_decay(0.99, 1000, 200) == pytest.approx(0.95)
    assert scaled_ema_decay(0.99, 1000, 5000) == pytest.approx(0.99)
    assert scaled_ema_decay(0.99, 1000, 50) == pytest.approx(0.8)
