"""The harmonised slice store and its Kedro dataset.

The store is a folder of ``.npy`` arrays that share their first axis with the
manifest's ``store_index`` column. Training loops memory-map the arrays, so no
image file is decoded during training.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from kedro.io import AbstractDataset, DatasetError

from lungct_kedro.datasets.atomic import atomic_directory

#: Array name → dtype. ``image`` is required; the others are optional.
STORE_ARRAYS: dict[str, str] = {
    "image": "float16",  # intensities in [0, 1] after the lung window
    "mask": "uint8",  # class map: 0 background, 1 ground-glass, 2 consolidation
    "hu": "int16",  # Hounsfield units where the source has them, else -1024
    "image_lowq": "float16",  # poor-quality twin in [0, 1], where the source has one
    "image_enhanced": "float16",  # enhanced reference of a curated low-quality slice
}


@dataclass
class SliceStore:
    """Arrays of harmonised slices, indexed by the manifest's ``store_index``.

    Attributes:
        arrays: Array name (a key of ``STORE_ARRAYS``) → array of shape
            (n_slices, size, size).
        attributes: Facts about how the arrays were made, such as the lung
            window in HU and the slice size in pixels.
    """

    arrays: dict[str, np.ndarray]
    attributes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if "image" not in self.arrays:
            raise ValueError("a slice store needs an 'image' array")
        unknown = set(self.arrays) - set(STORE_ARRAYS)
        if unknown:
            raise ValueError(f"unknown store arrays {sorted(unknown)}; allowed: {sorted(STORE_ARRAYS)}")
        n_slices = len(self.arrays["image"])
        for name, array in self.arrays.items():
            if array.ndim != 3 or len(array) != n_slices:
                raise ValueError(
                    f"store array '{name}' has shape {array.shape}; expected ({n_slices}, size, size)"
                )

    def __len__(self) -> int:
        return len(self.arrays["image"])

    @property
    def image_size(self) -> int:
        """Side length of every stored slice in pixels."""
        return int(self.arrays["image"].shape[-1])

    def has(self, name: str) -> bool:
        """Tell whether the store contains the array ``name``."""
        return name in self.arrays

    def check_rows(self, slice_ids: Sequence[str], store_indices: Sequence[int]) -> None:
        """Check that manifest rows point at their own slices in this store.

        Ingestion records each row's ``slice_id`` in the store's attributes.
        A mismatch means the store and the manifest come from different runs.

        Raises:
            ValueError: An index is out of range or names another slice.
        """
        known = self.attributes.get("slice_ids")
        if known is None:
            return
        for slice_id, index in zip(slice_ids, store_indices):
            if not 0 <= int(index) < len(known) or known[int(index)] != slice_id:
                raise ValueError(
                    f"slice {slice_id} is not at row {index} of the slice store, so the store and the "
                    "split manifest come from different ingestion runs; rerun ingestion and splits "
                    "(kedro run --pipelines=ingestion,splits) or the whole default run"
                )


class SliceStoreDataset(AbstractDataset[SliceStore, SliceStore]):
    """Save and load a ``SliceStore`` as a folder of ``.npy`` files.

    Saving writes into a temporary folder and renames it into place, so an
    interrupted save leaves the previous store intact. Loading memory-maps the
    arrays read-only.
    """

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> SliceStore:
        attributes_path = self._filepath / "attributes.json"
        if not attributes_path.is_file():
            raise DatasetError(
                f"no slice store at {self._filepath}; run the ingestion pipeline first "
                "(kedro run --pipeline=ingestion)"
            )
        attributes = json.loads(attributes_path.read_text())
        arrays = {
            name: np.load(self._filepath / f"{name}.npy", mmap_mode="r")
            for name in attributes.get("arrays", ["image"])
        }
        return SliceStore(arrays=arrays, attributes=attributes)

    def save(self, data: SliceStore) -> None:
        with atomic_directory(self._filepath) as staging:
            for name, array in data.arrays.items():
                np.save(staging / f"{name}.npy", np.ascontiguousarray(array, dtype=STORE_ARRAYS[name]))
            attributes = {**data.attributes, "arrays": sorted(data.arrays), "n_slices": len(data)}
            (staging / "attributes.json").write_text(json.dumps(attributes, indent=2))

    def _exists(self) -> bool:
        return (self._filepath / "attributes.json").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
