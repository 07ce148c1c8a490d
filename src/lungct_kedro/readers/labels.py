"""Label tables (CSV) that attach labels to slices or patients by a key column."""

from __future__ import annotations

from collections.abc import KeysView, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from lungct_kedro.readers.base import InvalidSourceError


def normalise_key(key: str) -> str:
    """Normalise a label key: strip whitespace, use forward slashes, drop a leading ``./``."""
    text = str(key).strip().replace("\\", "/")
    while text.startswith("./"):
        text = text[2:]
    return text


class LabelTable:
    """Rows of a label CSV, looked up by a key column.

    Every cell is kept as the text read from the file, so identifiers such as
    ``001`` keep their leading zeros. Empty cells become None. Callers convert
    numeric columns themselves.
    """

    def __init__(self, path: Path, key_column: str, rows: dict[str, dict[str, Any]], columns: Sequence[str]) -> None:
        self.path = Path(path)
        self.key_column = key_column
        self.columns = tuple(columns)
        self._rows = rows

    @classmethod
    def from_csv(cls, path: Path, key_column: str, columns: Sequence[str] | None = None) -> LabelTable:
        """Read a label table from a CSV file with a header row.

        Args:
            path: The CSV file.
            key_column: Column whose values identify the rows, such as a file
                path relative to the CSV's folder or a patient identifier.
                Keys are normalised with ``normalise_key``.
            columns: Label columns to keep; all columns except the key when None.

        Returns:
            The table, with every value as text and empty cells as None.

        Raises:
            InvalidSourceError: If the file cannot be read, the key column or a
                requested column is missing, a key is empty, or a key occurs
                more than once.
        """
        csv_path = Path(path)
        try:
            # Only empty cells count as missing, so a key such as "NA" stays text.
            frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False, na_values=[""])
        except FileNotFoundError as error:
            raise InvalidSourceError(csv_path, "label table not found", "Fix the label table path") from error
        except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
            raise InvalidSourceError(
                csv_path, f"label table cannot be read as CSV ({error})", "Save it as a UTF-8 CSV with a header row"
            ) from error

        available = [str(name) for name in frame.columns]
        if key_column not in available:
            raise InvalidSourceError(
                csv_path,
                f"key column {key_column!r} not found; available columns: {available}",
                "Set key_column to one of the available columns",
            )
        if columns is None:
            kept = [name for name in available if name != key_column]
        else:
            kept = list(columns)
            missing = [name for name in kept if name not in available]
            if missing:
                raise InvalidSourceError(
                    csv_path,
                    f"requested label columns {missing} not found; available columns: {available}",
                    "Fix the label 'columns' list or add the columns to the CSV",
                )

        raw_keys = frame[key_column]
        empty_rows = [int(index) + 2 for index in raw_keys.index[raw_keys.isna()]]
        if empty_rows:
            raise InvalidSourceError(
                csv_path,
                f"key column {key_column!r} is empty on line(s) {empty_rows[:10]}",
                "Fill in the key or delete those rows",
            )
        keys = [normalise_key(value) for value in raw_keys]
        counts = pd.Series(keys).value_counts()
        duplicates = sorted(counts[counts > 1].index.tolist())
        if duplicates:
            raise InvalidSourceError(
                csv_path,
                f"key column {key_column!r} has duplicated keys {duplicates[:10]} "
                f"({len(duplicates)} duplicated key(s) in all)",
                "Keep one row per key",
            )

        rows: dict[str, dict[str, Any]] = {}
        records = frame[kept].to_dict(orient="records")
        for key, record in zip(keys, records, strict=True):
            rows[key] = {name: (None if pd.isna(value) else value) for name, value in record.items()}
        return cls(csv_path, key_column, rows, kept)

    @property
    def keys(self) -> KeysView[str]:
        """Normalised keys in CSV row order, as a read-only view with constant-time ``in``."""
        return self._rows.keys()

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and normalise_key(key) in self._rows

    def labels_for(self, key: str) -> dict[str, Any]:
        """Return a copy of the labels of one key.

        Args:
            key: The key to look up; normalised like the CSV keys.

        Returns:
            Column name to value (text, or None for an empty cell).

        Raises:
            InvalidSourceError: If the table has no row for the key.
        """
        normalised = normalise_key(key)
        try:
            return dict(self._rows[normalised])
        except KeyError:
            raise InvalidSourceError(
                self.path,
                f"no row with {self.key_column} = {normalised!r}",
                "Add a row for this key, or set the source's labels.missing option to 'skip' or 'null'",
            ) from None
