"""Helpers that the report notebooks call inside their Jupyter kernel.

Each notebook opens the project's Kedro catalog with ``open_catalog``, checks
with ``outputs_present`` that a task's outputs exist before a section uses
them, and shows every figure with ``show_figure``. The reporting node finds
the figures again by the name that ``show_figure`` stores in the output's
display metadata (key ``FIGURE_KEY``).
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from IPython.display import Image, Markdown, display
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

#: Display-metadata key whose value names a figure, which the reporting node saves as ``<name>.png``.
FIGURE_KEY = "figure_name"


def open_catalog(
    project_path: str | Path | None = None, env: str | None = None, runtime_params: Mapping[str, Any] | None = None
) -> Any:
    """Open the Kedro catalog of a project with the configuration of a run with these settings.

    Logging below WARNING is switched off for the whole kernel, so Kedro's
    "Loading data from ..." lines do not fill the report. Kedro is imported
    here, after that switch, because it logs its logging set-up on import.

    Args:
        project_path: The Kedro project root. ``None`` searches upwards from
            the working directory, as ``kedro`` does.
        env: The configuration environment, or ``None`` for Kedro's default.
        runtime_params: Parameters that override the configuration, as
            ``kedro run --params`` does.

    Returns:
        The project's ``DataCatalog``.

    Raises:
        ValueError: No Kedro project contains the working directory.
    """
    logging.disable(logging.INFO)
    # The training modules import tqdm.auto, which warns in a kernel without ipywidgets.
    warnings.filterwarnings("ignore", message="IProgress not found")
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project
    from kedro.utils import find_kedro_project

    if project_path is None:
        project_path = find_kedro_project(Path.cwd())
        if project_path is None:
            raise ValueError(
                f"no Kedro project contains {Path.cwd()}. Set project_path in the parameters cell "
                "to the folder that holds pyproject.toml"
            )
    project_path = Path(project_path).resolve()
    bootstrap_project(project_path)
    session = KedroSession.create(project_path=project_path, env=env, runtime_params=dict(runtime_params or {}))
    return session.load_context().catalog


def outputs_present(catalog: Any, producers: Mapping[str, str], command: str | None = None) -> bool:
    """Tell whether every named dataset exists, and show a "not run yet" note when one is missing.

    Args:
        catalog: The project's catalog.
        producers: Dataset name → the pipeline that writes it.
        command: The command to suggest instead of ``kedro run --pipeline=...``,
            for outputs that no pipeline writes.

    Returns:
        ``True`` when every dataset exists, so the section can use them.
    """
    missing = [name for name in producers if name not in catalog or not catalog.exists(name)]
    if not missing:
        return True
    if command is None:
        pipelines = list(dict.fromkeys(producers[name] for name in missing))
        command = " and then ".join(f"`kedro run --pipeline={pipeline}`" for pipeline in pipelines)
    else:
        command = f"`{command}`"
    names = ", ".join(f"`{name}`" for name in missing)
    display(Markdown(f"> **Not run yet: run {command}**, which writes {names}. This section is left out."))
    return False


def show_figure(figure: Figure, name: str, dpi: int) -> None:
    """Show a Matplotlib figure as a PNG named ``name`` and close it.

    The PNG is rendered here rather than by the kernel's Matplotlib backend,
    so it is the same under papermill (``MPLBACKEND=Agg``) and in JupyterLab.
    """
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    display(Image(data=buffer.getvalue(), format="png"), metadata={FIGURE_KEY: name})
