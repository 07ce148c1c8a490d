"""Classification: few-shot supervised and Mean Teacher slice classifiers."""

from lungct_kedro.pipelines.classification.pipeline import create_pipeline

__all__ = ["create_pipeline"]
