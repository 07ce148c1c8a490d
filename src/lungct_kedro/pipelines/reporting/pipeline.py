"""Reporting pipeline wiring: the export, the paper's tables and the report notebooks."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from lungct_kedro.pipelines.reporting.nodes import export_lungct_multi
from lungct_kedro.pipelines.reporting.notebooks_pipeline import create_notebooks_pipeline
from lungct_kedro.pipelines.reporting.tables_pipeline import create_tables_pipeline


def create_export_pipeline() -> Pipeline:
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


def create_pipeline(**kwargs) -> Pipeline:
    """Create the reporting pipeline: export, tables, then notebooks."""
    return create_export_pipeline() + create_tables_pipeline() + create_notebooks_pipeline()
