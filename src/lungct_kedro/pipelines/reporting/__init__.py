"""Reporting: the published LungCT-Multi export (tables and figures come later)."""

from lungct_kedro.pipelines.reporting.pipeline import create_pipeline

__all__ = ["create_pipeline"]
