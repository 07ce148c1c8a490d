"""Pretraining pipeline wiring."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from lungct_kedro.pipelines.pretraining.nodes import compare_transfer, pretrain_ssl_encoder, select_pretraining_slices
from lungct_kedro.pipelines.pretraining.segmentation_transfer import compare_segmentation_transfer


def create_pipeline(**kwargs) -> Pipeline:
    """Create the pipeline that pre-trains the shared encoder and measures its transfer to classification."""
    return Pipeline(
        [
            Node(
                func=select_pretraining_slices,
                inputs=["split_manifest", "params:pretraining"],
                outputs="pretraining_slices",
                name="select_pretraining_slices",
            ),
            Node(
                func=pretrain_ssl_encoder,
                inputs=["slice_store", "pretraining_slices", "params:pretraining"],
                outputs=["pretrained_encoder", "pretraining_history", "pretraining_curves"],
                name="pretrain_ssl_encoder",
                tags=["training"],
            ),
            Node(
                func=compare_transfer,
                inputs=[
                    "slice_store",
                    "split_manifest",
                    "pretrained_encoder",
                    "params:classification",
                    "params:pretraining",
                ],
                outputs=[
                    "transfer_runs",
                    "transfer_table",
                    "transfer_table_markdown",
                    "transfer_summary",
                    "transfer_figure",
                ],
                name="compare_transfer",
                tags=["training"],
            ),
            Node(
                func=compare_segmentation_transfer,
                inputs=[
                    "slice_store",
                    "split_manifest",
                    "pretrained_encoder",
                    "params:segmentation",
                    "params:pretraining",
                ],
                outputs=[
                    "segmentation_transfer_table",
                    "segmentation_transfer_markdown",
                    "segmentation_transfer_summary",
                ],
                name="compare_segmentation_transfer",
                tags=["training"],
            ),
        ]
    )
