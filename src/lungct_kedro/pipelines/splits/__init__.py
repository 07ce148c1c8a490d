"""Splits: patient-level train/validation/test assignment without leakage."""

from lungct_kedro.pipelines.splits.pipeline import create_pipeline

__all__ = ["create_pipeline"]
