"""Declared raw sources: the catalog lists them, ingestion reads them lazily."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from lungct_kedro.readers.base import RawSlice, SkippedFile

SOURCE_KINDS = ("phantom", "image_folder", "dicom", "nifti")
SOURCE_KEYS = {"name", "kind", "path", "options", "labels", "skip_invalid", "mask_map"}
LABEL_KEYS = {"path", "join_on", "key_column", "columns", "missing"}
JOIN_MODES = ("file", "patient")
MISSING_LABEL_MODES = ("error", "skip", "null")


@dataclass(frozen=True)
class LabelJoin:
    """How a label table (CSV) attaches to the slices of one source.

    Attributes:
        path: The CSV file.
        join_on: ``file`` matches the CSV key against each slice's file path
            relative to the CSV's folder; ``patient`` matches it against the
            source's original patient identifier.
        key_column: The CSV column that contains the key, read as text.
        columns: Label columns to copy into the manifest (all others if None).
        missing: What a slice without a label row gets: ``error``, ``skip``
            (leave the slice out) or ``null`` (empty labels).
    """

    path: Path
    join_on: str
    key_column: str
    columns: tuple[str, ...] | None = None
    missing: str = "error"


@dataclass(frozen=True)
class DeclaredSource:
    """One entry of the ``sources`` list, validated but not yet read."""

    name: str
    kind: str
    path: Path | None
    options: Mapping[str, Any] = field(default_factory=dict)
    labels: LabelJoin | None = None
    skip_invalid: bool = False
    mask_map: Mapping[int, int] = field(default_factory=dict)
    # Key of the keyed-hash pseudonyms; kept out of repr so that it never reaches a log line.
    pseudonym_secret: str | None = field(default=None, repr=False)

    def read(
        self, skipped: list[SkippedFile] | None, phantom_params: Mapping[str, Any]
    ) -> Iterator[RawSlice]:
        """Yield the source's slices in reading order.

        Args:
            skipped: Collects files left out when ``skip_invalid`` is set;
                None makes the first invalid file raise.
            phantom_params: Phantom settings from the parameters; a phantom
                source's own ``options`` override them (for example ``seed``).
        """
        if self.kind == "phantom":
            from lungct_kedro.phantom import generate_phantom_slices

            settings = {**phantom_params, **self.options}
            seed = int(settings.pop("seed"))
            return generate_phantom_slices(settings, seed=seed)

        from lungct_kedro.readers import READERS

        return READERS[self.kind](self.path, self.options, skipped)


def parse_sources(
    entries: list[Mapping[str, Any]], root: Path | None = None, pseudonym_secret: str | None = None
) -> list[DeclaredSource]:
    """Validate ``sources`` entries from the catalog and resolve their paths.

    Args:
        entries: The list under ``sources`` in the catalog entry.
        root: Folder that relative paths are resolved against (the working
            folder if None).
        pseudonym_secret: Key for the pseudonyms of these sources' patients,
            volumes and slices; None falls back to the public default key.

    Raises:
        DatasetError: An entry has an unknown key or kind, a duplicate name,
            a missing path, or a label table that does not exist.
    """
    if not entries:
        raise DatasetError("the 'sources' list is empty; declare at least one source in the catalog")
    root = Path.cwd() if root is None else Path(root)
    parsed: list[DeclaredSource] = []
    for position, entry in enumerate(entries):
        parsed.append(_parse_entry(dict(entry), position, root, pseudonym_secret))
    names = [source.name for source in parsed]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DatasetError(f"source names must be unique; repeated: {duplicates}")
    return parsed


def _parse_entry(
    entry: dict[str, Any], position: int, root: Path, pseudonym_secret: str | None
) -> DeclaredSource:
    label = f"sources[{position}]"
    unknown = set(entry) - SOURCE_KEYS
    if unknown:
        raise DatasetError(f"{label}: unknown keys {sorted(unknown)}; allowed: {sorted(SOURCE_KEYS)}")
    kind = entry.get("kind")
    if kind not in SOURCE_KINDS:
        raise DatasetError(f"{label}: kind {kind!r} is not supported; use one of {list(SOURCE_KINDS)}")
    name = str(entry.get("name") or kind)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise DatasetError(f"{label}: name {name!r} may hold only letters, digits, '_', '.' and '-'")

    path = None
    if kind != "phantom":
        if not entry.get("path"):
            raise DatasetError(f"source '{name}': 'path' is missing; set it to the folder or file to read")
        path = _resolve(entry["path"], root)
        if not path.exists():
            raise DatasetError(
                f"source '{name}': path {path} does not exist; fix 'path' in the catalog "
                "or point LUNGCT_DATA_DIR / --params=data_dir=... at your data"
            )

    options = dict(entry.get("options") or {})
    if kind != "phantom":
        _check_reader_options(kind, name, options)

    return DeclaredSource(
        name=name,
        kind=kind,
        path=path,
        options=options,
        labels=_parse_labels(entry.get("labels"), name, root),
        skip_invalid=bool(entry.get("skip_invalid", False)),
        mask_map=_parse_mask_map(entry.get("mask_map"), name),
        pseudonym_secret=pseudonym_secret or None,
    )


def _check_reader_options(kind: str, name: str, options: Mapping[str, Any]) -> None:
    """Validate reader options when the catalog loads, naming the source on error."""
    from lungct_kedro.readers.dicom import parse_dicom_options
    from lungct_kedro.readers.images import parse_image_folder_options
    from lungct_kedro.readers.nifti import parse_nifti_options

    parsers = {"image_folder": parse_image_folder_options, "dicom": parse_dicom_options, "nifti": parse_nifti_options}
    try:
        parsers[kind](options)
    except ValueError as error:
        raise DatasetError(f"source '{name}': {error}") from error


def _parse_mask_map(raw: Mapping[Any, Any] | None, name: str) -> dict[int, int]:
    """Parse ``mask_map``, which renumbers mask classes (for example ``{3: 0}`` drops a class)."""
    if not raw:
        return {}
    try:
        return {int(key): int(value) for key, value in dict(raw).items()}
    except (TypeError, ValueError) as error:
        raise DatasetError(
            f"source '{name}': mask_map must map class numbers to class numbers, like {{3: 0}}; got {raw!r}"
        ) from error


def _parse_labels(raw: Mapping[str, Any] | None, name: str, root: Path) -> LabelJoin | None:
    if raw is None:
        return None
    unknown = set(raw) - LABEL_KEYS
    if unknown:
        raise DatasetError(f"source '{name}': unknown label keys {sorted(unknown)}; allowed: {sorted(LABEL_KEYS)}")
    for key in ("path", "key_column"):
        if not raw.get(key):
            raise DatasetError(f"source '{name}': labels.{key} is missing")
    join_on = raw.get("join_on", "file")
    if join_on not in JOIN_MODES:
        raise DatasetError(f"source '{name}': labels.join_on {join_on!r} must be one of {list(JOIN_MODES)}")
    missing = raw.get("missing", "error")
    if missing not in MISSING_LABEL_MODES:
        raise DatasetError(
            f"source '{name}': labels.missing {missing!r} must be one of {list(MISSING_LABEL_MODES)}"
        )
    path = _resolve(raw["path"], root)
    if not path.is_file():
        raise DatasetError(f"source '{name}': label table {path} not found; fix labels.path in the catalog")
    columns = raw.get("columns")
    return LabelJoin(
        path=path,
        join_on=join_on,
        key_column=str(raw["key_column"]),
        columns=tuple(columns) if columns else None,
        missing=missing,
    )


def _resolve(value: str | Path, root: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (root / path)


class ScanSourcesDataset(AbstractDataset[None, list[DeclaredSource]]):
    """Read-only dataset whose ``load`` returns the declared sources.

    Loading validates the declaration and resolves paths but reads no image:
    the ingestion node reads each source lazily, one volume at a time.
    ``pseudonym_secret`` is the key of the keyed-hash pseudonyms; the catalog
    takes it from the ``LUNGCT_PSEUDONYM_SECRET`` environment variable, so it
    is neither committed nor shown by ``kedro viz`` with the parameters.

    Example catalog entry::

        raw_sources:
          type: lungct_kedro.datasets.ScanSourcesDataset
          sources:
            - {name: phantom, kind: phantom}
            - name: medseg
              kind: image_folder
              path: data/01_raw/medseg
              options: {images: images, masks: masks, mask_format: palette}
            mask_map: {3: 0}   # optional: renumber mask classes before checks
    """

    def __init__(
        self,
        sources: list[Mapping[str, Any]],
        pseudonym_secret: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._entries = list(sources or [])
        self._pseudonym_secret = pseudonym_secret
        self.metadata = metadata

    def load(self) -> list[DeclaredSource]:
        return parse_sources(self._entries, pseudonym_secret=self._pseudonym_secret)

    def save(self, data: None) -> None:
        raise DatasetError("declared sources are read-only; edit the catalog to change them")

    def _describe(self) -> dict[str, Any]:
        return {"sources": [dict(entry) for entry in self._entries]}
