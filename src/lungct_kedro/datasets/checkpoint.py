"""Kedro dataset for PyTorch checkpoints, loaded with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from kedro.io import AbstractDataset, DatasetError

from lungct_kedro.datasets.atomic import atomic_file


class TorchCheckpointDataset(AbstractDataset[dict[str, Any], dict[str, Any]]):
    """Save a checkpoint dictionary with ``torch.save`` and load it safely.

    A checkpoint contains tensors and plain Python values only (for example
    ``{"state_dict": ..., "model": {...}, "best_val_score": 0.7}``), so it
    loads with ``weights_only=True`` and runs no pickled code.
    """

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> dict[str, Any]:
        if not self._filepath.is_file():
            raise DatasetError(
                f"no checkpoint at {self._filepath}; train the model first "
                "(kedro run --pipeline=segmentation)"
            )
        return torch.load(self._filepath, map_location="cpu", weights_only=True)

    def save(self, data: dict[str, Any]) -> None:
        with atomic_file(self._filepath) as staging:
            torch.save(data, staging)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
