"""Wiring of the reporting tables (filled in by its own change)."""

from __future__ import annotations

from kedro.pipeline import Pipeline


def create_tables_pipeline() -> Pipeline:
    """Create the tables part of the reporting pipeline."""
    return Pipeline([])
