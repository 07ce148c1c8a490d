"""Records and errors shared by every source reader.

A reader turns one declared source (a folder of images, DICOM series, NIfTI
volumes, or the phantom) into ``RawSlice`` records. Readers keep original
identifiers only in memory: ingestion turns them into pseudonyms and never
writes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class InvalidSourceError(ValueError):
    """Raised when a source file cannot be read or does not match its declaration.

    The message names the file and what the user can do about it.
    """

    def __init__(self, path: str | Path, problem: str, fix: str) -> None:
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.path}: {problem}. {fix}")


@dataclass
class SkippedFile:
    """A file left out of ingestion because ``skip_invalid`` was set."""

    path: str
    reason: str


@dataclass
class RawSlice:
    """One 2D axial slice as read from a source, before harmonisation.

    Attributes:
        pixels: 2D float32 array. Hounsfield units when ``is_hu`` is true,
            otherwise intensities scaled to [0, 1].
        is_hu: Whether ``pixels`` holds Hounsfield units.
        mask: 2D uint8 class map of the same shape (0 background,
            1 ground-glass opacity, 2 consolidation; 1 means any lesion for
            binary masks), or None when the source has no mask.
        file_key: Original path of the file relative to the source root.
            Used for label joins and pseudonyms; never written out.
        patient_key: Original patient identifier, or None when unknown.
        volume_key: Original volume or series identifier, or None.
        slice_index: Position of the slice in its volume after ordering
            (0 = most superior for DICOM and NIfTI).
        spacing_mm: In-plane pixel spacing (row, column) in millimetres.
        slice_thickness_mm: Slice thickness in millimetres, when known.
        labels: Slice-level labels from the source itself (for example
            ``severity`` for the phantom).
        lowq_pixels: A poor-quality twin of ``pixels`` in the same units,
            when the source provides one (the phantom does).
    """

    pixels: np.ndarray
    is_hu: bool
    file_key: str
    mask: np.ndarray | None = None
    patient_key: str | None = None
    volume_key: str | None = None
    slice_index: int = 0
    spacing_mm: tuple[float, float] | None = None
    slice_thickness_mm: float | None = None
    labels: dict[str, Any] = field(default_factory=dict)
    lowq_pixels: np.ndarray | None = None
