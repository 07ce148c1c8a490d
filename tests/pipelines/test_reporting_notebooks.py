"""Tests of the report notebooks: papermill runs on tiny outputs, "not run yet" sections and failing cells."""

from __future__ import annotations

import base64
import copy
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nbformat
import numpy as np
import pytest
from kedro.framework.session import KedroSession
from kedro.runner import ThreadRunner
from PIL import Image

from lungct_kedro.pipelines.reporting.notebook_support import FIGURE_KEY
from lungct_kedro.pipelines.reporting.notebooks import (
    ReportNotebookError,
    check_kernel,
    check_settings,
    collect_figures,
    run_report_notebook,
)
from lungct_kedro.pipelines.reporting.notebooks_pipeline import NOTEBOOK_NAMES
from lungct_kedro.run_context import RunContextHook, current_run
from tests.pipelines.conftest import REPO_ROOT, TINY_PARAMS

#: Figures each notebook shows when every task has run.
EXPECTED_FIGURES = {
    "dataset_overview": {"examples_by_source", "intensity_histograms", "composition", "examples_by_subset"},
    "segmentation": {"test_overlays", "dice_distribution", "training_curves", "methods_comparison"},
    "classification": {"confusion_matrices", "accuracy_vs_budget"},
    "pretraining": {"ssl_loss", "transfer_classification", "transfer_segmentation"},
    "dehazing": {"metric_distributions", "before_after", "curated_examples"},
}
TASK_PIPELINES = ["ingestion", "splits", "curation", "segmentation", "classification", "pretraining", "dehazing"]
#: A benchmark table as benchmarks/segmentation_methods.py writes it, with one skipped method.
METHODS_TABLE = """dataset,method,folds,seeds,runs,dice_mean,dice_mean_std,dice_pooled,dice_pooled_std,cpu_seconds,note
phantom,unet,2,2,4,0.71,0.03,0.80,0.02,120.5,
phantom,swin_unetr,2,2,4,0.64,0.05,0.74,0.04,121.0,
phantom,mean_teacher_unet,0,0,0,,,,,0.0,skipped: not supported on this dataset
"""
SETTINGS = {
    "execute": True,
    "kernel_name": "lungct-kedro",
    "kernel_start_timeout_s": 120,
    "cell_timeout_s": 300,
    "run_timeout_s": 600,
    "figure_dpi": 60,
    "html_template": "lab",
}


def notebook_params() -> dict[str, Any]:
    """Tiny settings for every task pipeline, with the notebooks executed."""
    params = copy.deepcopy(TINY_PARAMS)
    params["reporting_notebooks"] = {"execute": True, "figure_dpi": 60}
    params["curation"] = {"figures": {"n_examples": 2, "panel_size_in": 2.0}}
    small_training = {"iterations": 2, "batch_size": 4, "validate_every": 2, "log_every": 2}
    params["classification"] = {
        "input_size": 32,
        "n_draws": 1,
        "budget": {"total": 6},
        "training": small_training,
        "mean_teacher": {"unlabeled_batch_size": 4, "rampup_iterations": 2},
    }
    params["pretraining"] = {
        "input_size": 32,
        "projector": {"hidden_dim": 32, "out_dim": 16, "layers": 2},
        "predictor": {"hidden_dim": 8},
        "training": small_training,
        "collapse": {"monitor_slices": 4},
        "transfer": {"modes": ["linear_probe"], "segmentation": {"iterations": 2, "seeds": [0]}},
    }
    params["dehazing"] = {
        "degradation": {"low_dose": {"n_angles": 30}},
        "model": {"depth": 3, "features": 8},
        "training": small_training,
        "evaluation": {"n_eval_pairs": 2, "n_no_reference": 2, "figure_rows": 2},
    }
    return params


def project_catalog(project: Path, params: dict[str, Any]) -> Any:
    with KedroSession.create(project_path=project, runtime_params=params) as session:
        return session.load_context().catalog


def run_reporting(project: Path, params: dict[str, Any]) -> None:
    # Two threads let two notebook kernels, separate processes, start and import side by side.
    with KedroSession.create(project_path=project, runtime_params=params) as session:
        session.run(pipeline_names=["reporting"], runner=ThreadRunner(max_workers=2))


def output_texts(notebook: dict[str, Any]) -> str:
    """Join the text and Markdown outputs of every cell."""
    texts = []
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            texts += [output.get("text", ""), data.get("text/markdown", ""), data.get("text/plain", "")]
    return "\n".join("".join(text) if isinstance(text, list) else text for text in texts)


def error_outputs(notebook: dict[str, Any]) -> list[str]:
    return [
        f"{output['ename']}: {output['evalue']}"
        for cell in notebook["cells"]
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]


def check_figure(png: bytes, saved: Image.Image, name: str) -> None:
    """Check that ``png`` decodes as a PNG with content, and that the saved partition has its pixels."""
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG", name
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[0] > 100, name
    assert pixels.shape[1] > 100, name
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10, f"{name} is nearly one flat colour"
    assert np.array_equal(np.asarray(saved.convert("RGB")), pixels), name


def small_notebook(*sources: str) -> dict[str, Any]:
    """Return a notebook of a parameters cell and one code cell per source."""
    parameters = nbformat.v4.new_code_cell("project_path = None\nenv = None\nruntime_params = None\nfigure_dpi = 110")
    parameters.metadata["tags"] = ["parameters"]
    cells = [parameters, *(nbformat.v4.new_code_cell(source) for source in sources)]
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "lungct-kedro", "display_name": "Python", "language": "python"}
    return json.loads(nbformat.writes(notebook))


@contextmanager
def recorded_run(project: Path) -> Iterator[None]:
    """Record a Kedro run of ``project`` as RunContextHook does, for calling a node function directly."""
    hook = RunContextHook()
    hook.before_pipeline_run({"project_path": str(project), "env": None, "runtime_params": {}})
    try:
        yield
    finally:
        hook.after_pipeline_run()


# ---------- notebook runs ----------


def check_rendered(catalog: Any, name: str, project: Path) -> None:
    """Check a notebook executed with every input present: no errors, no skipped section, all figures."""
    executed = catalog.load(f"report_notebook_executed_{name}")
    assert error_outputs(executed) == [], name
    assert "not run yet" not in output_texts(executed).lower(), name
    injected = [cell for cell in executed["cells"] if "injected-parameters" in cell["metadata"].get("tags", [])]
    assert len(injected) == 1, name
    assert f'project_path = "{project}"' in "".join(injected[0]["source"]), name

    figures = catalog.load(f"report_notebook_figures_{name}")
    assert set(figures) == EXPECTED_FIGURES[name], name
    displayed = collect_figures(executed, name)
    for figure_name, load in figures.items():
        check_figure(displayed[figure_name], load(), f"{name}/{figure_name}")

    html = catalog.load(f"report_notebook_html_{name}")
    assert html.lstrip().lower().startswith("<!doctype html>"), name
    for figure_name, png in displayed.items():
        assert f"data:image/png;base64,{base64.b64encode(png).decode()}" in html, f"{name}/{figure_name}"


@pytest.mark.slow
def test_notebooks_on_tiny_outputs(kedro_project, run_pipelines):
    params = notebook_params()
    run_pipelines(TASK_PIPELINES, params=params)
    project_catalog(kedro_project, params).save("segmentation_methods_table", METHODS_TABLE)
    run_reporting(kedro_project, params)

    catalog = project_catalog(kedro_project, params)
    for name in NOTEBOOK_NAMES:
        check_rendered(catalog, name, kedro_project)
    assert "swin_unetr" in output_texts(catalog.load("report_notebook_executed_segmentation"))


@pytest.mark.slow
def test_notebook_says_not_run_yet(kedro_project):
    source = json.loads((kedro_project / "notebooks" / "classification.ipynb").read_text())
    with recorded_run(kedro_project):
        executed, html, figures = run_report_notebook("classification", source, SETTINGS, {}, "")

    assert error_outputs(executed) == []
    assert "not run yet: run `kedro run --pipeline=classification`" in output_texts(executed).lower()
    assert "kedro run --pipeline=classification" in html
    assert figures == {}


@pytest.mark.slow
def test_failing_cell_fails_node(tmp_path):
    with recorded_run(tmp_path), pytest.raises(ReportNotebookError) as raised:
        run_report_notebook("broken", small_notebook("x = 1", "x / 0"), SETTINGS, {}, "")
    message = str(raised.value)
    assert "report notebook 'broken'" in message
    assert "ZeroDivisionError" in message
    assert "cell 2 (counted from 0, code `x / 0`)" in message


@pytest.mark.slow
def test_timeouts_fail_node(tmp_path):
    slow_cell = "import time\ntime.sleep(1.5)"
    with recorded_run(tmp_path), pytest.raises(ReportNotebookError) as raised:
        run_report_notebook("slow", small_notebook(slow_cell), {**SETTINGS, "cell_timeout_s": 1}, {}, "")
    assert "a cell exceeded reporting_notebooks.cell_timeout_s = 1 s" in str(raised.value)

    with recorded_run(tmp_path), pytest.raises(ReportNotebookError) as raised:
        run_report_notebook(
            "slow", small_notebook(slow_cell, slow_cell), {**SETTINGS, "run_timeout_s": 2.5}, {}, ""
        )
    assert "the whole notebook exceeded reporting_notebooks.run_timeout_s = 2.5 s" in str(raised.value)


# ---------- node pieces without a kernel ----------


def test_missing_kernel_names_fix():
    with pytest.raises(ReportNotebookError) as raised:
        check_kernel("no-such-kernel-for-lungct")
    assert "ipykernel install --sys-prefix --name no-such-kernel-for-lungct" in str(raised.value)


def test_project_kernel_installed():
    check_kernel(SETTINGS["kernel_name"])


def test_settings_reject_unknown_key():
    with pytest.raises(ValueError, match="unknown keys \\['cell_timeout'\\]"):
        check_settings({**SETTINGS, "cell_timeout": 5})
    with pytest.raises(ValueError, match="run_timeout_s"):
        check_settings({**SETTINGS, "run_timeout_s": 0})


def png_output(name: str | None, colour: int) -> dict[str, Any]:
    buffer = io.BytesIO()
    Image.new("L", (4, 4), colour).save(buffer, format="PNG")
    data = {"image/png": base64.b64encode(buffer.getvalue()).decode(), "text/plain": "<Figure>"}
    output = nbformat.v4.new_output("display_data", data=data)
    if name is not None:
        output["metadata"][FIGURE_KEY] = name
    return output


def test_collect_figures_by_name():
    cell = nbformat.v4.new_code_cell("")
    cell["outputs"] = [png_output("first", 0), png_output(None, 128), png_output("second", 255)]
    figures = collect_figures({"cells": [cell]}, "demo")
    assert sorted(figures) == ["first", "second"]
    assert Image.open(io.BytesIO(figures["second"])).getpixel((0, 0)) == 255

    cell["outputs"].append(png_output("first", 64))
    with pytest.raises(ReportNotebookError, match="two figures named 'first'"):
        collect_figures({"cells": [cell]}, "demo")


def test_unexecuted_notebook_when_switched_off():
    source = json.loads((REPO_ROOT / "notebooks" / "classification.ipynb").read_text())
    notebook, html, figures = run_report_notebook("classification", source, {**SETTINGS, "execute": False}, {}, "")
    assert figures == {}
    assert "reporting_notebooks.execute" in "".join(notebook["cells"][0]["source"])
    assert len(notebook["cells"]) == len(source["cells"]) + 1
    assert "reporting_notebooks.execute" in html


def test_current_run_needs_hook():
    hook = RunContextHook()
    with pytest.raises(RuntimeError, match="RunContextHook"):
        current_run()
    hook.before_pipeline_run({"project_path": "/tmp/project", "env": "real", "runtime_params": {"a": 1}})
    try:
        assert current_run().env == "real"
        assert current_run().runtime_params == {"a": 1}
    finally:
        hook.after_pipeline_run()
    with pytest.raises(RuntimeError):
        current_run()


def test_committed_notebooks_have_no_outputs():
    for name in NOTEBOOK_NAMES:
        notebook = nbformat.read(REPO_ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        nbformat.validate(notebook)
        code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert code_cells[0].metadata.get("tags") == ["parameters"], name
        assert "project_path = None" in code_cells[0].source, name
        assert "env = None" in code_cells[0].source, name
        assert all(not cell.outputs and cell.execution_count is None for cell in code_cells), name
        assert notebook.metadata["kernelspec"]["name"] == "lungct-kedro", name
