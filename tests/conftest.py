"""Fixtures shared by the whole test suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# MONAI imports MLflow whenever it is installed; without this MLflow writes a telemetry
# file under the home folder on import. The Makefile sets it too; this covers a bare pytest.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """Return the real public lung CT sample that sits beside the checkout.

    The real-data tests must run in CI, so a missing folder fails the test
    instead of skipping it. ``LUNGCT_SHARED_DATA`` points elsewhere.
    """
    path = Path(os.environ.get("LUNGCT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not (path / "segmentation" / "images").is_dir():
        pytest.fail(
            f"real sample data not found at {path}; place the sample beside the "
            "checkout as ../shared/data or set LUNGCT_SHARED_DATA"
        )
    return path
