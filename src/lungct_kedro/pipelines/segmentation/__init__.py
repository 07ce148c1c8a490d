"""Segmentation: train, evaluate and apply a lesion segmentation network."""

from lungct_kedro.pipelines.segmentation.pipeline import create_pipeline

__all__ = ["create_pipeline"]
