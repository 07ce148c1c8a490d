"""Reporting pipeline wiring."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from lungct_kedro.pipelines.reporting.nodes import export_lungct_multi


def create_pipeline(**kwargs) -> Pipeline:
    """Create the pipeline that writes the published LungCT-Multi folder."""
    return Pipeline(
        [
            Node(
                func=export_lungct_multi,
                inputs=[
                    "slice_store",
                    "split_manifest",
                    "dehazing_subset",
                    "dehazing_pairs",
                    "params:reporting",
                    "params:classification",
                    "params:pretraining",
                ],
                outputs=["lungct_multi_export", "lungct_multi_export_summary"],
                name="export_lungct_multi",
            ),
        ]
    )
