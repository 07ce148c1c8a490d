"""Curation: a low-quality subset of slices with enhanced references for dehazing."""

from lungct_kedro.pipelines.curation.pipeline import create_pipeline

__all__ = ["create_pipeline"]
