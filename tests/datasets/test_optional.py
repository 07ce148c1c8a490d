"""OptionalDataset: None while missing, the inner dataset's content once written."""

from __future__ import annotations


import pytest

from lungct_kedro.datasets import OptionalDataset


def _dataset(path):
    return OptionalDataset(dataset={"type": "lungct_kedro.datasets.AtomicJSONDataset", "filepath": str(path)})


def test_optional_missing_then_saved(tmp_path):
    dataset = _dataset(tmp_path / "metrics.json")
    assert dataset.load() is None
    assert not dataset.exists()
    dataset.save({"dice": 0.5})
    assert dataset.exists()
    assert dataset.load() == {"dice": 0.5}


def test_unreadable_existing_file_still_raises(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("{not json")
    with pytest.raises(Exception, match="metrics.json|Expecting"):
        _dataset(path).load()


def test_config_without_inner_type_is_rejected():
    with pytest.raises(ValueError, match="'dataset' mapping"):
        OptionalDataset(dataset={"filepath": "x.json"})
