"""Parquet, JSON and text datasets that write to a temporary file and rename it into place.

kedro-datasets' writers open the target file for writing first, so a failed
save leaves an empty or partial file where the previous output was. These
write beside the target and replace it only when the write has succeeded.
Local paths only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from kedro.io import AbstractDataset, DatasetError

from lungct_kedro.datasets.atomic import atomic_file


class AtomicParquetDataset(AbstractDataset[pd.DataFrame, pd.DataFrame]):
    """A pandas DataFrame stored as one Parquet file, replaced atomically."""

    def __init__(
        self,
        filepath: str,
        load_args: dict[str, Any] | None = None,
        save_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._filepath = Path(filepath)
        self._load_args = dict(load_args or {})
        self._save_args = {"index": False, **(save_args or {})}
        self.metadata = metadata

    def load(self) -> pd.DataFrame:
        if not self._filepath.is_file():
            raise DatasetError(f"{self._filepath} not found; run the pipeline that writes it first")
        return pd.read_parquet(self._filepath, **self._load_args)

    def save(self, data: pd.DataFrame) -> None:
        with atomic_file(self._filepath) as staging:
            data.to_parquet(staging, **self._save_args)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}


class AtomicJSONDataset(AbstractDataset[Any, Any]):
    """A JSON document, replaced atomically."""

    def __init__(self, filepath: str, indent: int = 2, metadata: dict[str, Any] | None = None) -> None:
        self._filepath = Path(filepath)
        self._indent = indent
        self.metadata = metadata

    def load(self) -> Any:
        if not self._filepath.is_file():
            raise DatasetError(f"{self._filepath} not found; run the pipeline that writes it first")
        return json.loads(self._filepath.read_text())

    def save(self, data: Any) -> None:
        with atomic_file(self._filepath) as staging:
            staging.write_text(json.dumps(data, indent=self._indent))

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}


class AtomicTextDataset(AbstractDataset[str, str]):
    """A UTF-8 text file (CSV, Markdown, LaTeX), replaced atomically."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> str:
        if not self._filepath.is_file():
            raise DatasetError(f"{self._filepath} not found; run the pipeline that writes it first")
        return self._filepath.read_text(encoding="utf-8")

    def save(self, data: str) -> None:
        if not isinstance(data, str):
            raise DatasetError(f"{self._filepath} takes text; got {type(data).__name__}")
        with atomic_file(self._filepath) as staging:
            staging.write_text(data, encoding="utf-8")

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
