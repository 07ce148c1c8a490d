"""Nodes that execute the report notebooks with papermill and collect their outputs.

Each notebook under ``notebooks/`` runs in the Jupyter kernel named by
``reporting_notebooks.kernel_name``, with the project path, environment and
runtime parameters of the current Kedro run as papermill parameters, so that
it opens the same catalog as the run. The node returns the executed notebook,
its HTML rendering and the PNG figures that the notebook named with
``notebook_support.show_figure``.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import nbformat
from PIL import Image

from lungct_kedro.pipelines.reporting.notebook_support import FIGURE_KEY
from lungct_kedro.run_context import current_run

logger = logging.getLogger(__name__)

#: Keys of ``params:reporting_notebooks``.
SETTINGS_KEYS = {
    "execute",
    "kernel_name",
    "kernel_start_timeout_s",
    "cell_timeout_s",
    "run_timeout_s",
    "figure_dpi",
    "html_template",
}

#: The command that registers the project's kernel inside the virtual environment.
KERNEL_INSTALL_COMMAND = (
    '.venv/bin/python -m ipykernel install --sys-prefix --name {name} --display-name "Python (lungct_kedro)"'
)


class ReportNotebookError(RuntimeError):
    """A report notebook could not be executed, or one of its cells raised."""


def check_settings(settings: Mapping[str, Any]) -> None:
    """Check ``params:reporting_notebooks`` for missing and unknown keys.

    Raises:
        ValueError: A key is missing or unknown, or a timeout is not positive.
    """
    missing = sorted(SETTINGS_KEYS - set(settings))
    unknown = sorted(set(settings) - SETTINGS_KEYS)
    if missing or unknown:
        raise ValueError(
            f"invalid reporting_notebooks parameters: missing keys {missing}, unknown keys {unknown}. "
            f"Allowed keys: {sorted(SETTINGS_KEYS)} (conf/base/parameters_reporting_notebooks.yml)"
        )
    for key in ("kernel_start_timeout_s", "cell_timeout_s", "run_timeout_s", "figure_dpi"):
        if not float(settings[key]) > 0:
            raise ValueError(f"reporting_notebooks.{key} is {settings[key]!r}, but it must be a positive number")


def check_kernel(kernel_name: str) -> None:
    """Check that the Jupyter kernel ``kernel_name`` is installed.

    Raises:
        ReportNotebookError: The kernel is not installed. The message gives
            the command that installs it.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(kernel_name)
    except NoSuchKernel as error:
        raise ReportNotebookError(
            f"Jupyter kernel '{kernel_name}' (reporting_notebooks.kernel_name) is not installed. Register it "
            f"from the project root with: {KERNEL_INSTALL_COMMAND.format(name=kernel_name)}"
        ) from error


def as_notebook(document: Mapping[str, Any]) -> nbformat.NotebookNode:
    """Turn an ``.ipynb`` JSON document into a notebook node, joining sources stored as lists of lines."""
    return nbformat.reads(json.dumps(document), as_version=4)


def _cell_error(notebook_name: str, source: nbformat.NotebookNode, error: Any) -> ReportNotebookError:
    from nbconvert.filters import strip_ansi

    # Papermill inserts its injected-parameters cell after the cell tagged `parameters`, so
    # indices past that cell are one higher than in the committed notebook.
    tagged = [index for index, cell in enumerate(source.cells) if "parameters" in cell.metadata.get("tags", [])]
    injected_at = tagged[0] + 1 if tagged else 0
    cell_index = error.cell_index - 1 if error.cell_index > injected_at else error.cell_index
    code_lines = (error.source or "").strip().splitlines()
    first_line = code_lines[0] if code_lines else ""
    traceback = strip_ansi("\n".join(error.traceback[-4:])) if error.traceback else ""
    return ReportNotebookError(
        f"report notebook '{notebook_name}' failed in cell {cell_index} (counted from 0, code `{first_line}`): "
        f"{error.ename}: {error.evalue}\n{traceback}"
    )


def execute_notebook(
    notebook_name: str,
    source: Mapping[str, Any],
    parameters: Mapping[str, Any],
    settings: Mapping[str, Any],
    cwd: str | None = None,
) -> nbformat.NotebookNode:
    """Execute a notebook with papermill and return it with its outputs.

    Each cell may run for ``cell_timeout_s`` seconds, and the whole notebook
    for ``run_timeout_s``: a cell's limit shrinks to the time left.

    Args:
        notebook_name: Name used in messages.
        source: The notebook as loaded from its ``.ipynb`` JSON.
        parameters: Values for the cell tagged ``parameters``.
        settings: The ``reporting_notebooks`` parameters.
        cwd: Working directory of the kernel.

    Raises:
        ReportNotebookError: A cell raised or timed out, or the kernel died.
    """
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    cell_timeout_s = float(settings["cell_timeout_s"])
    run_timeout_s = float(settings["run_timeout_s"])
    deadline = time.monotonic() + run_timeout_s
    binding_limit = {"name": "cell_timeout_s"}

    def timeout_of(cell: Any) -> int:
        remaining_s = deadline - time.monotonic()
        binding_limit["name"] = "run_timeout_s" if remaining_s < cell_timeout_s else "cell_timeout_s"
        return max(1, math.ceil(min(cell_timeout_s, remaining_s)))

    notebook = as_notebook(source)
    started = time.perf_counter()
    try:
        executed = papermill.execute_notebook(
            notebook,
            None,
            parameters=dict(parameters),
            kernel_name=str(settings["kernel_name"]),
            start_timeout=int(settings["kernel_start_timeout_s"]),
            progress_bar=False,
            cwd=cwd,
            timeout_func=timeout_of,
        )
    except PapermillExecutionError as error:
        raise _cell_error(notebook_name, notebook, error) from error
    except CellTimeoutError as error:
        if binding_limit["name"] == "run_timeout_s":
            limit = f"the whole notebook exceeded reporting_notebooks.run_timeout_s = {run_timeout_s:g} s"
        else:
            limit = f"a cell exceeded reporting_notebooks.cell_timeout_s = {cell_timeout_s:g} s"
        raise ReportNotebookError(f"report notebook '{notebook_name}' timed out: {limit}") from error
    except DeadKernelError as error:
        raise ReportNotebookError(
            f"the kernel of report notebook '{notebook_name}' died (for example, out of memory): {error}"
        ) from error
    logger.info("Executed report notebook %s in %.1f s", notebook_name, time.perf_counter() - started)
    return executed


def collect_figures(notebook: Mapping[str, Any], notebook_name: str) -> dict[str, bytes]:
    """Return the PNG bytes of every output named with ``FIGURE_KEY``, by name.

    Raises:
        ReportNotebookError: Two outputs carry the same name, or a named
            output contains no PNG image.
    """
    figures: dict[str, bytes] = {}
    for index, cell in enumerate(notebook.get("cells", [])):
        for output in cell.get("outputs", []):
            name = output.get("metadata", {}).get(FIGURE_KEY)
            if name is None:
                continue
            if name in figures:
                raise ReportNotebookError(
                    f"report notebook '{notebook_name}' shows two figures named '{name}' (second in cell {index}). "
                    "Give each show_figure call its own name"
                )
            png = output.get("data", {}).get("image/png")
            if png is None:
                raise ReportNotebookError(
                    f"report notebook '{notebook_name}': output '{name}' in cell {index} contains no PNG image"
                )
            figures[str(name)] = base64.b64decode(png)
    return figures


def render_html(notebook: Mapping[str, Any], template_name: str) -> str:
    """Render a notebook to one self-contained HTML page (images inline) with nbconvert."""
    from nbconvert import HTMLExporter

    # The lab and classic templates write no alt attribute, so nbconvert warns once per image and
    # fills in a generic text. A logger of its own keeps that warning out of the run's log.
    exporter_log = logging.getLogger(f"{__name__}.nbconvert")
    exporter_log.setLevel(logging.ERROR)
    exporter = HTMLExporter(template_name=template_name, log=exporter_log)
    body, _ = exporter.from_notebook_node(as_notebook(notebook))
    return body


def _not_executed(source: Mapping[str, Any], notebook_name: str) -> nbformat.NotebookNode:
    notebook = as_notebook(source)
    note = nbformat.v4.new_markdown_cell(
        f"> **Not executed.** `reporting_notebooks.execute` was false in this run, so `{notebook_name}` "
        "is shown without outputs. Run `kedro run --pipeline=reporting` with it set to true to fill it in."
    )
    notebook.cells.insert(0, note)
    return notebook


def run_report_notebook(
    notebook_name: str,
    source: Mapping[str, Any],
    settings: Mapping[str, Any],
    export_summary: Any,
    paper_tables: Any,
) -> tuple[dict[str, Any], str, dict[str, Image.Image]]:
    """Execute one report notebook and return the executed notebook, its HTML and its figures.

    The notebook reads the task outputs itself, through the catalog of a
    Kedro session opened with the project path, environment and runtime
    parameters of this run (``lungct_kedro.run_context``).

    Args:
        notebook_name: The notebook's file name without ``.ipynb``.
        source: The notebook as committed, without outputs.
        settings: The ``reporting_notebooks`` parameters.
        export_summary: Not read. As an input, it makes the node run after the export.
        paper_tables: Not read. As an input, it makes the node run after the tables.

    Returns:
        The executed notebook (nbformat JSON), its HTML page, and figure
        name → PNG image. With ``execute: false``, the notebook is returned
        unexecuted with a note at the top, and without figures.

    Raises:
        ReportNotebookError: The kernel is not installed, a cell raised or
            timed out, or two figures share a name.
        ValueError: The settings are invalid.
    """
    check_settings(settings)
    if not settings["execute"]:
        logger.info("Report notebook %s not executed: reporting_notebooks.execute is false", notebook_name)
        notebook = _not_executed(source, notebook_name)
        return dict(notebook), render_html(notebook, str(settings["html_template"])), {}

    check_kernel(str(settings["kernel_name"]))
    run = current_run()
    parameters = {
        "project_path": str(run.project_path),
        "env": run.env,
        "runtime_params": run.runtime_params,
        "figure_dpi": int(settings["figure_dpi"]),
    }
    executed = execute_notebook(notebook_name, source, parameters, settings, cwd=str(run.project_path))
    figures = collect_figures(executed, notebook_name)
    html = render_html(executed, str(settings["html_template"]))
    logger.info("Report notebook %s: %d figures", notebook_name, len(figures))
    return dict(executed), html, {name: Image.open(io.BytesIO(png)) for name, png in figures.items()}
