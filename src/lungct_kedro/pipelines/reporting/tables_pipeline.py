"""Wiring of the LungCT-Multi paper's tables: one node per table, then one node that joins their Markdown."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from lungct_kedro.pipelines.reporting.tables import (
    combine_paper_tables,
    write_classification_table,
    write_composition_table,
    write_dehazing_table,
    write_pretraining_table,
    write_segmentation_table,
    write_severity_table,
)

#: Table names, in the order of the combined Markdown file. Each name gives three catalog entries.
TABLE_NAMES = ("composition", "severity", "segmentation", "classification", "pretraining", "dehazing")


def _outputs(name: str) -> list[str]:
    return [f"paper_table_{name}_csv", f"paper_table_{name}_markdown", f"paper_table_{name}_latex"]


def create_tables_pipeline() -> Pipeline:
    """Create the tables part of the reporting pipeline.

    The metric files of the task pipelines are ``OptionalDataset`` entries,
    so a task that has not run gives a "not run yet" table instead of an error.
    """
    return Pipeline(
        [
            Node(
                func=write_composition_table,
                inputs=["split_manifest", "dehazing_subset", "params:classification", "params:pretraining"],
                outputs=_outputs("composition"),
                name="write_composition_table",
            ),
            Node(
                func=write_severity_table,
                inputs=["split_manifest", "params:classification", "params:reporting"],
                outputs=_outputs("severity"),
                name="write_severity_table",
            ),
            Node(
                func=write_segmentation_table,
                inputs=["segmentation_metrics", "params:reporting_tables"],
                outputs=_outputs("segmentation"),
                name="write_segmentation_table",
            ),
            Node(
                func=write_classification_table,
                inputs=["classification_metrics", "params:reporting_tables"],
                outputs=_outputs("classification"),
                name="write_classification_table",
            ),
            Node(
                func=write_pretraining_table,
                inputs=["transfer_table", "segmentation_transfer_table", "params:reporting_tables"],
                outputs=_outputs("pretraining"),
                name="write_pretraining_table",
            ),
            Node(
                func=write_dehazing_table,
                inputs=["dehazing_metrics", "params:reporting_tables"],
                outputs=_outputs("dehazing"),
                name="write_dehazing_table",
            ),
            Node(
                func=combine_paper_tables,
                inputs=[f"paper_table_{name}_markdown" for name in TABLE_NAMES],
                outputs="paper_tables_markdown",
                name="combine_paper_tables",
            ),
        ]
    )
