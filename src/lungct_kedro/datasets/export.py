"""A Kedro dataset that writes a whole folder of files at once, with SHA-256 checksums."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from lungct_kedro.datasets.atomic import atomic_directory

#: File content, or a function that returns it when the file is written.
FileContent = bytes | Callable[[], bytes]

#: Name of the checksum file written at the top of the folder.
CHECKSUM_FILENAME = "checksums.sha256"


def _check_relative_path(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ValueError(f"export path '{name}' is invalid; use a relative POSIX path inside the folder")
    if str(path) == CHECKSUM_FILENAME:
        raise ValueError(f"'{CHECKSUM_FILENAME}' is written by the dataset itself; remove it from the files")
    return path


def _write_file(target: Path, content: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)


class ExportFolderDataset(AbstractDataset[Mapping[str, FileContent], dict[str, Path]]):
    """A folder of files, replaced as a whole, with a ``sha256sum -c`` checksum file.

    ``save`` takes a mapping from relative POSIX paths to bytes, or to
    functions that return bytes (so that large exports are encoded one file
    at a time). The files are written into a temporary folder beside the
    target, ``checksums.sha256`` is added, and the folder is renamed into
    place. If any write raises, the previous folder is left as it was.
    ``load`` returns the relative paths listed in ``checksums.sha256``
    mapped to their absolute paths.
    """

    def __init__(self, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(path)
        self.metadata = metadata

    def save(self, data: Mapping[str, FileContent]) -> None:
        relative_paths = {name: _check_relative_path(name) for name in data}
        with atomic_directory(self._path) as staging:
            digests: dict[str, str] = {}
            for name in sorted(data):
                content = data[name]
                if callable(content):
                    content = content()
                if not isinstance(content, bytes):
                    raise TypeError(f"export file '{name}' has content of type {type(content).__name__}; expected bytes")
                _write_file(staging / relative_paths[name], content)
                digests[str(relative_paths[name])] = hashlib.sha256(content).hexdigest()
            # Two spaces between digest and path is the text-mode format that `sha256sum -c` reads.
            lines = [f"{digest}  {name}\n" for name, digest in sorted(digests.items())]
            (staging / CHECKSUM_FILENAME).write_text("".join(lines), encoding="utf-8")

    def load(self) -> dict[str, Path]:
        checksum_path = self._path / CHECKSUM_FILENAME
        if not checksum_path.is_file():
            raise DatasetError(
                f"no export at {self._path} ({CHECKSUM_FILENAME} not found); "
                "run the reporting pipeline first (kedro run --pipeline=reporting)"
            )
        files: dict[str, Path] = {}
        for line in checksum_path.read_text(encoding="utf-8").splitlines():
            _, name = line.split("  ", 1)
            files[name] = self._path / name
        return files

    def _exists(self) -> bool:
        return (self._path / CHECKSUM_FILENAME).is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
