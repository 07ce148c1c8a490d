"""Wiring of the reporting notebooks (filled in by its own change)."""

from __future__ import annotations

from kedro.pipeline import Pipeline


def create_notebooks_pipeline() -> Pipeline:
    """Create the notebooks part of the reporting pipeline."""
    return Pipeline([])
