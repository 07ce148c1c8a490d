"""A dataset that loads as ``None`` while its file has not been written yet.

Reporting nodes read the outputs of every task pipeline, but a user may run
``kedro run --pipeline=reporting`` after only some of them. Wrapping those
outputs in :class:`OptionalDataset` keeps one catalog entry per file, so the
lineage stays connected, and lets the reporting nodes write a "not run yet"
section instead of failing on the first missing file.
"""

from __future__ import annotations

from typing import Any

from kedro.io import AbstractDataset


class OptionalDataset(AbstractDataset[Any, Any]):
    """Delegate to an inner dataset; ``load`` returns ``None`` when it does not exist.

    Catalog example::

        segmentation_metrics:
          type: lungct_kedro.datasets.OptionalDataset
          dataset:
            type: lungct_kedro.datasets.AtomicJSONDataset
            filepath: data/08_reporting/segmentation_metrics.json

    Saving goes to the inner dataset unchanged. Only a missing file gives
    ``None``: a file that exists but cannot be read still raises the inner
    dataset's error.
    """

    def __init__(self, dataset: dict[str, Any], metadata: dict[str, Any] | None = None) -> None:
        if not isinstance(dataset, dict) or "type" not in dataset:
            raise ValueError("OptionalDataset needs a 'dataset' mapping with a 'type', like any catalog entry")
        self._inner = AbstractDataset.from_config("inner", dict(dataset))
        self.metadata = metadata

    def load(self) -> Any:
        """Load the inner dataset, or return ``None`` when it has not been written."""
        if not self._inner.exists():
            return None
        return self._inner.load()

    def save(self, data: Any) -> None:
        """Save through the inner dataset."""
        self._inner.save(data)

    def _exists(self) -> bool:
        return self._inner.exists()

    def _describe(self) -> dict[str, Any]:
        return {"dataset": self._inner._describe()}
