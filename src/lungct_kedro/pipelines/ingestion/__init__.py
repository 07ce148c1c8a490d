"""Ingestion: declared sources → harmonised slice store and manifest."""

from lungct_kedro.pipelines.ingestion.pipeline import create_pipeline

__all__ = ["create_pipeline"]
