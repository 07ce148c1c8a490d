"""Source readers that turn declared raw sources into ``RawSlice`` records.

``READERS`` maps a source ``kind`` to its reader. Every reader has the
signature ``read(path, options, skipped=None)`` and returns an iterator of
``RawSlice``. The phantom source has its own generator in
``lungct_kedro.phantom``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from lungct_kedro.readers.base import InvalidSourceError, RawSlice, SkippedFile
from lungct_kedro.readers.dicom import read_dicom
from lungct_kedro.readers.images import read_image_folder
from lungct_kedro.readers.labels import LabelTable
from lungct_kedro.readers.nifti import read_nifti

Reader = Callable[[Path, Mapping[str, Any], list[SkippedFile] | None], Iterator[RawSlice]]

READERS: dict[str, Reader] = {
    "image_folder": read_image_folder,
    "dicom": read_dicom,
    "nifti": read_nifti,
}

__all__ = [
    "READERS",
    "InvalidSourceError",
    "LabelTable",
    "RawSlice",
    "Reader",
    "SkippedFile",
    "read_dicom",
    "read_image_folder",
    "read_nifti",
]
