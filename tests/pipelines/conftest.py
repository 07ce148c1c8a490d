"""A throw-away copy of the Kedro project for pipeline runs in a temporary folder."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from tests.conftest import REPO_ROOT

#: Sizes small enough for a pipeline run of seconds on 2 CPU cores.
TINY_PARAMS: dict[str, Any] = {
    "ingestion": {"image_size": 64},
    "phantom": {"n_patients": 6, "slices_per_patient": 3, "image_size": 64, "low_quality": {"n_angles": 45}},
    "segmentation": {
        "model": {"channels": [8, 16, 32], "num_res_units": 1},
        "training": {"iterations": 6, "batch_size": 4, "validate_every": 3, "log_every": 3},
        "evaluation": {"overlay_slices": 2},
    },
    # Each report notebook starts a Jupyter kernel, which takes seconds, so only the notebook tests execute them.
    "reporting_notebooks": {"execute": False},
}


@pytest.fixture
def kedro_project(tmp_path, monkeypatch) -> Path:
    """Copy ``conf/``, ``notebooks/`` and ``pyproject.toml`` into ``tmp_path`` and work there.

    Outputs land under ``tmp_path / "data"``, never in the checkout or in
    the read-only sample folder.
    """
    shutil.copytree(REPO_ROOT / "conf", tmp_path / "conf", ignore=shutil.ignore_patterns("local"))
    (tmp_path / "conf" / "local").mkdir()
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(REPO_ROOT / "notebooks", tmp_path / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    (tmp_path / "data").mkdir()
    # Kedro's bootstrap checks that a source folder exists; the package itself is installed.
    (tmp_path / "src").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KEDRO_DISABLE_TELEMETRY", "1")
    # Tracking has its own tests (test_tracking.py); elsewhere a store per test only costs time.
    monkeypatch.setenv("LUNGCT_MLFLOW_ENABLED", "false")
    bootstrap_project(tmp_path)
    return tmp_path


@pytest.fixture
def run_pipelines(kedro_project) -> Callable[..., None]:
    """Return a function that runs named pipelines in the temporary project."""

    def run(names: list[str], env: str | None = None, params: dict[str, Any] | None = None) -> None:
        with KedroSession.create(project_path=kedro_project, env=env, runtime_params=params or TINY_PARAMS) as session:
            session.run(pipeline_names=names)

    return run
