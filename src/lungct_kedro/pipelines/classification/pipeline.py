"""Classification pipeline wiring."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from lungct_kedro.pipelines.classification.nodes import (
    draw_label_budgets,
    run_few_shot_experiments,
    select_classification_slices,
    summarise_few_shot_results,
)


def create_pipeline(**kwargs) -> Pipeline:
    """Create the pipeline that runs the few-shot classification protocol."""
    return Pipeline(
        [
            Node(
                func=select_classification_slices,
                inputs=["split_manifest", "params:classification"],
                outputs="classification_slices",
                name="select_classification_slices",
            ),
            Node(
                func=draw_label_budgets,
                inputs=["classification_slices", "params:classification"],
                outputs="classification_draws",
                name="draw_label_budgets",
            ),
            Node(
                func=run_few_shot_experiments,
                inputs=["slice_store", "classification_slices", "classification_draws", "params:classification"],
                outputs=[
                    "classification_runs",
                    "classification_history",
                    "classification_supervised_checkpoint",
                    "classification_mean_teacher_checkpoint",
                ],
                name="run_few_shot_experiments",
                tags=["training"],
            ),
            Node(
                func=summarise_few_shot_results,
                inputs=["classification_runs", "params:classification"],
                outputs=[
                    "classification_metrics",
                    "classification_results_table",
                    "classification_confusion_matrices",
                    "classification_accuracy_figure",
                ],
                name="summarise_few_shot_results",
            ),
        ]
    )
