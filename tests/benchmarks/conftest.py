"""Make the scripts in ``benchmarks/`` importable by their file names, as they import each other."""

from __future__ import annotations

import logging
import sys

import pytest

from tests.conftest import REPO_ROOT

BENCHMARKS = str(REPO_ROOT / "benchmarks")
if BENCHMARKS not in sys.path:
    sys.path.insert(0, BENCHMARKS)


@pytest.fixture(autouse=True)
def restore_training_log_levels():
    """Undo the quieter log levels that the benchmark's ``main`` sets, so later tests see INFO records."""
    names = ("lungct_kedro.training", "lungct_kedro.pipelines.segmentation")
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
