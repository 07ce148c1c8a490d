"""Segmentation-inference pipeline wiring."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from lungct_kedro.pipelines.ingestion.nodes import harmonise_sources
from lungct_kedro.pipelines.segmentation_inference.nodes import predict_new_scans


def create_pipeline(**kwargs) -> Pipeline:
    """Create the pipeline that applies a trained checkpoint to new scans."""
    return Pipeline(
        [
            Node(
                func=harmonise_sources,
                inputs=["inference_sources", "params:phantom", "params:ingestion"],
                outputs=["inference_manifest", "inference_ingestion_summary", "inference_store"],
                name="harmonise_inference_sources",
            ),
            Node(
                func=predict_new_scans,
                inputs=["inference_store", "inference_manifest", "segmentation_checkpoint", "params:segmentation"],
                outputs=["inference_masks", "inference_metrics", "inference_per_slice", "inference_overlays"],
                name="predict_new_scans",
            ),
        ]
    )
