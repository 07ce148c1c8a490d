"""Tests of the slice store, checkpoint and declared-source datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from kedro.io import DatasetError

from lungct_kedro.datasets import ScanSourcesDataset, SliceStore, SliceStoreDataset, TorchCheckpointDataset


def make_store(n_slices: int = 3, size: int = 8) -> SliceStore:
    rng = np.random.default_rng(0)
    return SliceStore(
        arrays={
            "image": rng.random((n_slices, size, size)).astype(np.float16),
            "mask": rng.integers(0, 3, (n_slices, size, size)).astype(np.uint8),
        },
        attributes={"image_size": size},
    )


def test_store_round_trip_memory_maps(tmp_path):
    dataset = SliceStoreDataset(str(tmp_path / "store"))
    original = make_store()
    dataset.save(original)
    loaded = dataset.load()
    assert isinstance(loaded.arrays["image"], np.memmap)
    assert np.array_equal(loaded.arrays["mask"], original.arrays["mask"])
    assert loaded.attributes["n_slices"] == 3


def test_failed_save_keeps_previous_store(tmp_path, monkeypatch):
    dataset = SliceStoreDataset(str(tmp_path / "store"))
    dataset.save(make_store(n_slices=3))

    def broken_save(path, array):
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", broken_save)
    with pytest.raises(DatasetError, match="disk full"):
        dataset.save(make_store(n_slices=5))
    monkeypatch.undo()
    assert len(dataset.load()) == 3
    assert sorted(path.name for path in tmp_path.iterdir()) == ["store"]


def test_store_rejects_mismatched_rows():
    with pytest.raises(ValueError, match="mask"):
        SliceStore(arrays={"image": np.zeros((2, 4, 4)), "mask": np.zeros((3, 4, 4))})


def test_missing_store_names_pipeline(tmp_path):
    with pytest.raises(DatasetError, match="ingestion"):
        SliceStoreDataset(str(tmp_path / "absent")).load()


def test_checkpoint_round_trip(tmp_path):
    dataset = TorchCheckpointDataset(str(tmp_path / "model.pt"))
    checkpoint = {"state_dict": {"weight": torch.ones(2, 2)}, "model": {"channels": [4, 8]}, "best": 0.5}
    dataset.save(checkpoint)
    loaded = dataset.load()
    assert torch.equal(loaded["state_dict"]["weight"], torch.ones(2, 2))
    assert loaded["model"]["channels"] == [4, 8]


def test_checkpoint_refuses_pickled_objects(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"state_dict": {}, "payload": Path("x")}, path)
    with pytest.raises(Exception, match="weights_only|Unsupported global"):
        TorchCheckpointDataset(str(path)).load()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"kind": "tiff", "path": "."}, "not supported"),
        ({"kind": "dicom"}, "'path' is missing"),
        ({"kind": "dicom", "path": "no/such/folder"}, "does not exist"),
        ({"kind": "phantom", "colour": "red"}, "unknown keys"),
        ({"kind": "dicom", "path": ".", "labels": {"path": "x.csv"}}, "key_column"),
        ({"kind": "dicom", "path": ".", "labels": {"path": "x.csv", "key_column": "file"}}, "not found"),
    ],
)
def test_source_declaration_errors(entry, message):
    with pytest.raises(DatasetError, match=message):
        ScanSourcesDataset(sources=[entry]).load()


def test_duplicate_source_names_rejected():
    with pytest.raises(DatasetError, match="unique"):
        ScanSourcesDataset(sources=[{"kind": "phantom"}, {"kind": "phantom"}]).load()


def test_empty_source_list_rejected():
    with pytest.raises(DatasetError, match="empty"):
        ScanSourcesDataset(sources=[]).load()


def test_store_rows_checked_against_manifest():
    store = make_store(n_slices=2)
    store.attributes["slice_ids"] = ["sl-a", "sl-b"]
    store.check_rows(["sl-b", "sl-a"], [1, 0])
    with pytest.raises(ValueError, match="different ingestion runs"):
        store.check_rows(["sl-a"], [1])
    with pytest.raises(ValueError, match="different ingestion runs"):
        store.check_rows(["sl-c"], [5])


def test_saved_outputs_follow_umask(tmp_path):
    import os
    import stat

    previous = os.umask(0o022)
    try:
        SliceStoreDataset(str(tmp_path / "store")).save(make_store())
        checkpoint = tmp_path / "model.pt"
        TorchCheckpointDataset(str(checkpoint)).save({"state_dict": {}})
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "store").stat().st_mode) == 0o755
    assert stat.S_IMODE(checkpoint.stat().st_mode) == 0o644
