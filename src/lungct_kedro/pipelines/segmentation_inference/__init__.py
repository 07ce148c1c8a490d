"""Segmentation inference: apply a trained checkpoint to newly declared scans."""

from lungct_kedro.pipelines.segmentation_inference.pipeline import create_pipeline

__all__ = ["create_pipeline"]
