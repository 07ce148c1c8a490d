"""Segmentation pipeline wiring."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from lungct_kedro.pipelines.segmentation.nodes import (
    evaluate_segmentation_model,
    select_auxiliary_slices,
    select_segmentation_slices,
    train_segmentation_model,
)


def create_pipeline(**kwargs) -> Pipeline:
    """Create the pipeline that trains and tests the segmentation network."""
    return Pipeline(
        [
            Node(
                func=select_segmentation_slices,
                inputs=["split_manifest", "params:segmentation"],
                outputs="segmentation_slices",
                name="select_segmentation_slices",
            ),
            Node(
                func=select_auxiliary_slices,
                inputs=["split_manifest", "params:segmentation"],
                outputs="segmentation_auxiliary_slices",
                name="select_segmentation_auxiliary_slices",
            ),
            Node(
                func=train_segmentation_model,
                inputs=[
                    "slice_store",
                    "segmentation_slices",
                    "segmentation_auxiliary_slices",
                    "pretrained_encoder",
                    "params:segmentation",
                ],
                outputs=["segmentation_checkpoint", "segmentation_history", "segmentation_training_curves"],
                name="train_segmentation_model",
                tags=["training"],
            ),
            Node(
                func=evaluate_segmentation_model,
                inputs=["slice_store", "segmentation_slices", "segmentation_checkpoint", "params:segmentation"],
                outputs=["segmentation_metrics", "segmentation_per_slice", "segmentation_overlays"],
                name="evaluate_segmentation_model",
            ),
        ]
    )
