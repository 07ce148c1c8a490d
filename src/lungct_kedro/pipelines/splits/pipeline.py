"""Splits pipeline wiring."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from lungct_kedro.pipelines.splits.nodes import assign_splits, check_split_leakage


def create_pipeline(**kwargs) -> Pipeline:
    """Create the pipeline that splits the manifest by patient."""
    return Pipeline(
        [
            Node(
                func=assign_splits,
                inputs=["slice_manifest", "params:splits"],
                outputs="candidate_split_manifest",
                name="assign_splits",
            ),
            Node(
                func=check_split_leakage,
                inputs="candidate_split_manifest",
                outputs=["split_manifest", "split_summary"],
                name="check_split_leakage",
            ),
        ]
    )
