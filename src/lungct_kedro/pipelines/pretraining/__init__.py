"""Self-supervised pre-training of the shared encoder, and its transfer to classification."""

from lungct_kedro.pipelines.pretraining.pipeline import create_pipeline

__all__ = ["create_pipeline"]
