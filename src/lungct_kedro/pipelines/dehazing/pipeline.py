"""Dehazing pipeline wiring."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from lungct_kedro.pipelines.dehazing.nodes import (
    evaluate_dehazing_model,
    select_dehazing_slices,
    train_dehazing_model,
)


def create_pipeline(**kwargs) -> Pipeline:
    """Create the pipeline that trains the restoration network and benchmarks it."""
    return Pipeline(
        [
            Node(
                func=select_dehazing_slices,
                inputs=["split_manifest", "dehazing_subset", "params:dehazing", "params:ingestion.image_size"],
                outputs="dehazing_slices",
                name="select_dehazing_slices",
            ),
            Node(
                func=train_dehazing_model,
                inputs=["slice_store", "dehazing_slices", "params:dehazing"],
                outputs=["dehazing_checkpoint", "dehazing_history", "dehazing_training_curves"],
                name="train_dehazing_model",
                tags=["training"],
            ),
            Node(
                func=evaluate_dehazing_model,
                inputs=[
                    "slice_store",
                    "dehazing_pairs",
                    "dehazing_slices",
                    "dehazing_checkpoint",
                    "params:dehazing",
                    "params:curation",
                ],
                outputs=[
                    "dehazing_metrics",
                    "dehazing_per_slice",
                    "dehazing_no_reference",
                    "dehazing_before_after",
                    "dehazing_no_reference_examples",
                ],
                name="evaluate_dehazing_model",
            ),
        ]
    )
