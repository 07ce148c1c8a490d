"""Tests for label tables read from CSV."""

from __future__ import annotations

from pathlib import Path

import pytest

from lungct_kedro.readers import InvalidSourceError, LabelTable
from lungct_kedro.readers.labels import normalise_key


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def patients_csv(tmp_path: Path) -> Path:
    return write_csv(
        tmp_path / "patients.csv",
        "patient_id,diagnosis,age,severity\n"
        "001,COVID-19,039,\n"
        "010,CAP,61,severe\n"
        "NA,Normal,44,ordinary\n",
    )


# --- real sample -----------------------------------------------------------------------------


def test_classification_labels_by_file(shared_data_dir: Path) -> None:
    table = LabelTable.from_csv(shared_data_dir / "classification" / "labels.csv", "file")
    assert len(table) == 118
    assert all(key.startswith("dicom/") for key in table.keys)
    first = table.labels_for(next(iter(table.keys)))
    assert first["patient_id"] == "P001"
    assert first["diagnosis"] == "COVID-19"
    assert first["rank_superior_to_inferior"] == "0"
    assert "file" not in first


def test_segmentation_index_by_slice(shared_data_dir: Path) -> None:
    table = LabelTable.from_csv(
        shared_data_dir / "segmentation" / "index.csv", "image", columns=["ggo_pixels", "consolidation_pixels"]
    )
    assert len(table) == 50
    assert table.columns == ("ggo_pixels", "consolidation_pixels")
    assert sum(int(table.labels_for(key)["ggo_pixels"]) for key in table.keys) == 560_121
    assert sum(int(table.labels_for(key)["consolidation_pixels"]) for key in table.keys) == 326_093


# --- values and keys ---------------------------------------------------------------------------


def test_ids_kept_as_strings(patients_csv: Path) -> None:
    table = LabelTable.from_csv(patients_csv, "patient_id")
    assert tuple(table.keys) == ("001", "010", "NA")
    assert "010" in table.keys
    labels = table.labels_for("001")
    assert labels == {"diagnosis": "COVID-19", "age": "039", "severity": None}
    assert isinstance(table.labels_for("010")["age"], str)


def test_na_text_is_not_missing(patients_csv: Path) -> None:
    table = LabelTable.from_csv(patients_csv, "patient_id")
    assert "NA" in table
    assert table.labels_for("NA")["diagnosis"] == "Normal"


def test_requested_columns_only(patients_csv: Path) -> None:
    table = LabelTable.from_csv(patients_csv, "patient_id", columns=["severity"])
    assert table.labels_for("010") == {"severity": "severe"}


def test_labels_for_returns_copy(patients_csv: Path) -> None:
    table = LabelTable.from_csv(patients_csv, "patient_id")
    table.labels_for("001")["diagnosis"] = "changed"
    assert table.labels_for("001")["diagnosis"] == "COVID-19"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("images\\12.png", "images/12.png"),
        ("  images/12.png ", "images/12.png"),
        ("./images/12.png", "images/12.png"),
        ("001", "001"),
    ],
)
def test_normalise_key(raw: str, expected: str) -> None:
    assert normalise_key(raw) == expected


def test_keys_normalised_on_both_sides(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "l.csv", "file,label\n images\\a.png ,1\n./images/b.png,0\n")
    table = LabelTable.from_csv(path, "file")
    assert tuple(table.keys) == ("images/a.png", "images/b.png")
    assert table.labels_for("images/a.png") == {"label": "1"}
    assert table.labels_for(".\\images\\b.png") == {"label": "0"}


# --- invalid tables ----------------------------------------------------------------------------


def test_duplicate_keys_named(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "dupes.csv", "id,label\n001,1\n002,0\n001,0\n 002 ,1\n003,1\n")
    with pytest.raises(InvalidSourceError) as caught:
        LabelTable.from_csv(path, "id")
    message = str(caught.value)
    assert "dupes.csv" in message
    assert "'001'" in message
    assert "'002'" in message
    assert "'003'" not in message


def test_missing_row_names_key_and_fix(patients_csv: Path) -> None:
    table = LabelTable.from_csv(patients_csv, "patient_id")
    with pytest.raises(InvalidSourceError) as caught:
        table.labels_for("1")
    message = str(caught.value)
    assert "patients.csv" in message
    assert "'1'" in message
    assert "labels.missing" in message


def test_missing_key_column_lists_columns(patients_csv: Path) -> None:
    with pytest.raises(InvalidSourceError) as caught:
        LabelTable.from_csv(patients_csv, "patient")
    message = str(caught.value)
    assert "patients.csv" in message
    assert "'patient'" in message
    assert "patient_id" in message
    assert "diagnosis" in message


def test_missing_requested_column(patients_csv: Path) -> None:
    with pytest.raises(InvalidSourceError) as caught:
        LabelTable.from_csv(patients_csv, "patient_id", columns=["diagnosis", "grade"])
    assert "['grade']" in str(caught.value)
    assert "patients.csv" in str(caught.value)


def test_empty_key_cell_rejected(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "gaps.csv", "id,label\n001,1\n,0\n")
    with pytest.raises(InvalidSourceError) as caught:
        LabelTable.from_csv(path, "id")
    assert "gaps.csv" in str(caught.value)
    assert "[3]" in str(caught.value)


@pytest.mark.parametrize(
    ("name", "content"),
    [("absent.csv", None), ("empty.csv", "")],
)
def test_unreadable_table(tmp_path: Path, name: str, content: str | None) -> None:
    path = tmp_path / name
    if content is not None:
        write_csv(path, content)
    with pytest.raises(InvalidSourceError) as caught:
        LabelTable.from_csv(path, "id")
    assert name in str(caught.value)
