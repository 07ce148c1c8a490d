"""Kedro datasets for formats that kedro-datasets does not cover."""

from lungct_kedro.datasets.checkpoint import TorchCheckpointDataset
from lungct_kedro.datasets.slice_store import SliceStore, SliceStoreDataset
from lungct_kedro.datasets.sources import DeclaredSource, ScanSourcesDataset

__all__ = [
    "DeclaredSource",
    "ScanSourcesDataset",
    "SliceStore",
    "SliceStoreDataset",
    "TorchCheckpointDataset",
]
