"""Dehazing: train a slice-restoration network on degraded pairs and benchmark it against baselines."""

from lungct_kedro.pipelines.dehazing.pipeline import create_pipeline

__all__ = ["create_pipeline"]
