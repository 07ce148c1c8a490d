"""Curation pipeline wiring."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from lungct_kedro.pipelines.curation.nodes import (
    compute_quality_metrics,
    make_enhanced_references,
    plot_curation_examples,
    plot_quality_histograms,
    select_low_quality,
)


def create_pipeline(**kwargs) -> Pipeline:
    """Create the pipeline that scores slice quality and builds the dehazing pairs."""
    return Pipeline(
        [
            Node(
                func=compute_quality_metrics,
                inputs=["slice_store", "split_manifest", "params:curation"],
                outputs="quality_metrics",
                name="compute_quality_metrics",
            ),
            Node(
                func=select_low_quality,
                inputs=["quality_metrics", "params:curation"],
                outputs=["dehazing_subset", "curation_summary"],
                name="select_low_quality",
            ),
            Node(
                func=make_enhanced_references,
                inputs=["slice_store", "dehazing_subset", "params:curation"],
                outputs="dehazing_pairs",
                name="make_enhanced_references",
            ),
            Node(
                func=plot_quality_histograms,
                inputs=["quality_metrics", "dehazing_subset", "curation_summary", "params:curation"],
                outputs="curation_metric_histograms",
                name="plot_quality_histograms",
            ),
            Node(
                func=plot_curation_examples,
                inputs=[
                    "slice_store",
                    "quality_metrics",
                    "dehazing_subset",
                    "dehazing_pairs",
                    "curation_summary",
                    "params:curation",
                ],
                outputs="curation_examples",
                name="plot_curation_examples",
            ),
        ]
    )
