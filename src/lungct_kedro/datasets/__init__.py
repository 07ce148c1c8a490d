"""Kedro datasets for formats that kedro-datasets does not cover."""

from lungct_kedro.datasets.checkpoint import TorchCheckpointDataset
from lungct_kedro.datasets.export import ExportFolderDataset
from lungct_kedro.datasets.optional import OptionalDataset
from lungct_kedro.datasets.slice_store import SliceStore, SliceStoreDataset
from lungct_kedro.datasets.sources import DeclaredSource, ScanSourcesDataset
from lungct_kedro.datasets.tables import AtomicJSONDataset, AtomicParquetDataset, AtomicTextDataset

__all__ = [
    "AtomicJSONDataset",
    "AtomicParquetDataset",
    "AtomicTextDataset",
    "DeclaredSource",
    "ExportFolderDataset",
    "OptionalDataset",
    "ScanSourcesDataset",
    "SliceStore",
    "SliceStoreDataset",
    "TorchCheckpointDataset",
]
