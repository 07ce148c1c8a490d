"""Ingestion pipeline wiring."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from lungct_kedro.pipelines.ingestion.nodes import harmonise_sources


def create_pipeline(**kwargs) -> Pipeline:
    """Create the pipeline that builds the slice store and manifest."""
    return Pipeline(
        [
            Node(
                func=harmonise_sources,
                inputs=["raw_sources", "params:phantom", "params:ingestion"],
                outputs=["slice_manifest", "ingestion_summary", "slice_store"],
                name="harmonise_sources",
            ),
        ]
    )
