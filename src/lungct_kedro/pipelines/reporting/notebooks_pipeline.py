"""Wiring of the report notebooks: one node per notebook, after the export and the tables."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kedro.pipeline import Node, Pipeline

from lungct_kedro.pipelines.reporting.notebooks import run_report_notebook

#: Notebooks under ``notebooks/``, without ``.ipynb``. Each name appears in four catalog entries,
#: ``report_notebook_{source,executed,html,figures}_<name>``.
NOTEBOOK_NAMES = ("dataset_overview", "segmentation", "classification", "pretraining", "dehazing")

#: Outputs of the export and table nodes. Loading them makes the notebooks run after those nodes.
UPSTREAM_OUTPUTS = ["lungct_multi_export_summary", "paper_tables_markdown"]


def _notebook_runner(notebook_name: str) -> Callable[..., tuple[dict[str, Any], str, dict[str, Any]]]:
    # A plain function rather than functools.partial, whose type hints Kedro's parameter check cannot read.
    def run_notebook(source, settings, export_summary, paper_tables):
        return run_report_notebook(notebook_name, source, settings, export_summary, paper_tables)

    run_notebook.__name__ = run_notebook.__qualname__ = f"run_{notebook_name}_notebook"
    return run_notebook


def create_notebooks_pipeline() -> Pipeline:
    """Create the notebooks part of the reporting pipeline.

    The nodes read only parameters, the notebook sources and the export and
    table outputs, which a reporting run always has. Each notebook reads the
    task outputs itself and shows "not run yet" for the ones that are missing.
    """
    return Pipeline(
        [
            Node(
                func=_notebook_runner(name),
                inputs=[f"report_notebook_source_{name}", "params:reporting_notebooks", *UPSTREAM_OUTPUTS],
                outputs=[
                    f"report_notebook_executed_{name}",
                    f"report_notebook_html_{name}",
                    f"report_notebook_figures_{name}",
                ],
                name=f"run_{name}_notebook",
            )
            for name in NOTEBOOK_NAMES
        ]
    )
