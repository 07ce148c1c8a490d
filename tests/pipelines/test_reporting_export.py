"""Tests of the LungCT-Multi export: layout, checksums, nnU-Net and MONAI views, privacy, atomicity."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kedro.io import DatasetError
from PIL import Image

from lungct_kedro.datasets import AtomicParquetDataset, ExportFolderDataset, SliceStoreDataset
from lungct_kedro.datasets import export as export_module
from lungct_kedro.pipelines.reporting.export import encode_png, quantise_image, select_classification
from tests.pipelines.conftest import TINY_PARAMS

PIPELINES = ["ingestion", "splits", "curation", "reporting"]
NNUNET_FOLDER = Path("nnunet") / "Dataset501_LungCTMulti"
#: Original identifiers and file-name parts of the real sample that must never be published.
ORIGINAL_IDS = ["P001", "cap001", "normal001", "coronacases", "radiopaedia"]
TEXT_SUFFIXES = {".csv", ".json", ".md", ".sha256"}


def tiny_params() -> dict:
    params = copy.deepcopy(TINY_PARAMS)
    params["curation"] = {"figures": {"n_examples": 2, "panel_size_in": 2.0}}
    return params


def export_folder(project: Path) -> Path:
    return project / "data" / "08_reporting" / "lungct_multi"


def files_on_disk(folder: Path) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}


def read_checksums(folder: Path) -> dict[str, str]:
    listed = {}
    for line in (folder / "checksums.sha256").read_text().splitlines():
        digest, name = line.split("  ", 1)
        listed[name] = digest
    return listed


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


# ---------- checks shared by the phantom and real-sample runs ----------


def check_checksums(folder: Path) -> None:
    listed = read_checksums(folder)
    on_disk = files_on_disk(folder) - {"checksums.sha256"}
    assert set(listed) == on_disk, f"unlisted: {sorted(on_disk - set(listed))[:5]}, missing: {sorted(set(listed) - on_disk)[:5]}"
    for name, digest in listed.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, f"checksum differs for {name}"


def check_layout(folder: Path) -> None:
    for name in ["DATASET_CARD.md", "metadata/clinical_info.csv", "metadata/slices.csv", "segmentation/datalist.json"]:
        assert (folder / name).is_file(), f"{name} missing"
    for split in ["train", "val", "test"]:
        assert (folder / "metadata" / "splits" / f"{split}.csv").is_file(), f"{split}.csv missing"
    assert (folder / NNUNET_FOLDER / "dataset.json").is_file()


def check_nnunet(folder: Path) -> None:
    root = folder / NNUNET_FOLDER
    dataset = json.loads((root / "dataset.json").read_text())
    images = sorted(path.name.removesuffix("_0000.png") for path in (root / "imagesTr").glob("*.png"))
    labels = sorted(path.name.removesuffix(".png") for path in (root / "labelsTr").glob("*.png"))
    assert all(path.name.endswith("_0000.png") for path in (root / "imagesTr").glob("*.png"))
    assert dataset["numTraining"] == len(images)
    assert dataset["numTraining"] == len(labels)
    assert images == labels
    assert dataset["labels"] == {"background": 0, "ground_glass_opacity": 1, "consolidation": 2}
    assert dataset["channel_names"] == {"0": "CT"}
    assert dataset["file_ending"] == ".png"
    test_cases = {path.name.removesuffix("_0000.png") for path in (root / "imagesTs").glob("*.png")}
    assert not test_cases & set(images), "a case is in both imagesTr and imagesTs"


def check_datalist(folder: Path, manifest: pd.DataFrame) -> None:
    datalist = json.loads((folder / "segmentation" / "datalist.json").read_text())
    assert set(datalist) == {"training", "validation", "test"}
    split_of_key = {"training": "train", "validation": "val", "test": "test"}
    split_of_slice = dict(zip(manifest["slice_id"], manifest["split"]))
    for key, entries in datalist.items():
        for entry in entries:
            assert (folder / "segmentation" / entry["image"]).is_file(), entry["image"]
            assert (folder / "segmentation" / entry["label"]).is_file(), entry["label"]
            slice_id = Path(entry["image"]).stem
            assert Path(entry["label"]).stem == slice_id
            assert split_of_slice[slice_id] == split_of_key[key]
    n_entries = sum(len(entries) for entries in datalist.values())
    assert n_entries == int(manifest["has_mask"].sum())


def check_masks_and_images(folder: Path, project: Path, manifest: pd.DataFrame) -> None:
    store = SliceStoreDataset(str(project / "data" / "03_primary" / "slice_store")).load()
    with_mask = manifest[manifest["has_mask"]]
    assert len(with_mask) > 0
    for row in with_mask.itertuples():
        mask = read_png(folder / "segmentation" / "masks" / f"{row.slice_id}.png")
        assert mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, store.arrays["mask"][row.store_index], err_msg=row.slice_id)
        image = read_png(folder / "segmentation" / "images" / f"{row.slice_id}.png")
        np.testing.assert_array_equal(image, quantise_image(store.arrays["image"][row.store_index], 8))


def check_no_original_ids(folder: Path) -> None:
    for path in folder.rglob("*"):
        relative = path.relative_to(folder).as_posix()
        for original in ORIGINAL_IDS:
            assert original.lower() not in relative.lower(), f"{original} in path {relative}"
        if path.is_file() and path.suffix in TEXT_SUFFIXES:
            text = path.read_text(encoding="utf-8").lower()
            for original in ORIGINAL_IDS:
                assert original.lower() not in text, f"{original} in {relative}"


def check_splits_tables(folder: Path, manifest: pd.DataFrame) -> None:
    for split in ["train", "val", "test"]:
        table = pd.read_csv(folder / "metadata" / "splits" / f"{split}.csv")
        assert list(table.columns) == ["slice_id", "patient_id", "source"]
        assert set(table["slice_id"]) == set(manifest.loc[manifest["split"] == split, "slice_id"])
    clinical = pd.read_csv(folder / "metadata" / "clinical_info.csv")
    assert clinical["patient_id"].is_unique
    # Slices without a patient ID (COVID-SemiSeg) have no row in clinical_info.
    with_patient = manifest[manifest["patient_id"].notna()]
    assert set(clinical["patient_id"]) == set(with_patient["patient_id"])
    assert clinical["n_slices"].sum() == len(with_patient)
    assert clinical["patient_id"].str.startswith("pat-").all()
    slices = pd.read_csv(folder / "metadata" / "slices.csv")
    assert "store_index" not in slices.columns
    assert len(slices) == len(manifest)


def check_export(project: Path) -> pd.DataFrame:
    folder = export_folder(project)
    manifest = AtomicParquetDataset(str(project / "data" / "05_model_input" / "split_manifest.parquet")).load()
    check_layout(folder)
    check_checksums(folder)
    check_nnunet(folder)
    check_datalist(folder, manifest)
    check_masks_and_images(folder, project, manifest)
    check_splits_tables(folder, manifest)
    check_no_original_ids(folder)
    return manifest


# ---------- pipeline runs ----------


def test_export_run_on_phantom(kedro_project, run_pipelines, monkeypatch):
    run_pipelines(PIPELINES, params=tiny_params())
    manifest = check_export(kedro_project)
    folder = export_folder(kedro_project)

    labeled = files_on_disk(folder / "classification" / "labeled")
    assert {name.split("/")[0] for name in labeled} == {"ordinary", "severe", "critical"}
    pretraining = {Path(name).stem for name in files_on_disk(folder / "pre-training")}
    assert pretraining == set(manifest.loc[manifest["split"] == "train", "slice_id"])
    subset = AtomicParquetDataset(str(kedro_project / "data" / "05_model_input" / "dehazing_subset.parquet")).load()
    hazy = files_on_disk(folder / "dehazing" / "hazy")
    assert hazy == {f"{row.slice_id}_{row.variant}.png" for row in subset.itertuples()}
    assert files_on_disk(folder / "dehazing" / "enhanced") == hazy
    card = (folder / "DATASET_CARD.md").read_text()
    assert "extensive bilateral involvement, respiratory failure" in card
    assert "synthetic, generated by this project" in card
    summary = json.loads((kedro_project / "data" / "08_reporting" / "lungct_multi_export_summary.json").read_text())
    assert summary["subsets"]["segmentation"]["total"] == int(manifest["has_mask"].sum())

    # A write that fails halfway leaves the previous export as it was.
    before = {name: (folder / name).read_bytes() for name in files_on_disk(folder)}
    calls = {"n": 0}
    real_write = export_module._write_file

    def fail_on_tenth_write(target, content):
        calls["n"] += 1
        if calls["n"] == 10:
            raise OSError("simulated full disk")
        real_write(target, content)

    monkeypatch.setattr(export_module, "_write_file", fail_on_tenth_write)
    with pytest.raises(Exception, match="simulated full disk"):
        run_pipelines(["reporting"], params=tiny_params())
    after = {name: (folder / name).read_bytes() for name in files_on_disk(folder)}
    assert calls["n"] == 10
    assert after.keys() == before.keys()
    assert after == before
    assert not [path for path in folder.parent.iterdir() if path.name.startswith(".lungct_multi")]


def test_export_run_on_real_sample(kedro_project, run_pipelines, shared_data_dir):
    params = {**tiny_params(), "data_dir": str(shared_data_dir)}
    run_pipelines(PIPELINES, env="real", params=params)
    manifest = check_export(kedro_project)
    folder = export_folder(kedro_project)

    labeled = files_on_disk(folder / "classification" / "labeled")
    assert {name.split("/")[0] for name in labeled} <= {"0", "1"}
    assert len(labeled) == int(manifest["slice_infection"].isin(["0", "1"]).sum())
    unlabeled = {Path(name).stem for name in files_on_disk(folder / "classification" / "unlabeled")}
    expected_unlabeled = manifest[
        manifest["source"].isin(["covid_ct_md", "unlabeled"])
        & manifest["slice_infection"].isna()
        & (manifest["split"] == "train")
    ]
    assert unlabeled == set(expected_unlabeled["slice_id"])
    card = (folder / "DATASET_CARD.md").read_text()
    assert "CC BY 4.0" in card
    assert "no licence stated" in card
    clinical = pd.read_csv(folder / "metadata" / "clinical_info.csv")
    assert "diagnosis" in clinical.columns


# ---------- units ----------


def test_export_dataset_failed_save_keeps_previous(tmp_path):
    dataset = ExportFolderDataset(str(tmp_path / "export"))
    dataset.save({"a.txt": b"first", "sub/b.txt": b"second"})

    def broken() -> bytes:
        raise RuntimeError("encoding failed")

    # Kedro wraps every error raised by save() in DatasetError.
    with pytest.raises(DatasetError, match="encoding failed"):
        dataset.save({"a.txt": b"replaced", "sub/c.txt": broken})
    assert (tmp_path / "export" / "a.txt").read_bytes() == b"first"
    assert files_on_disk(tmp_path / "export") == {"a.txt", "sub/b.txt", "checksums.sha256"}
    assert set(dataset.load()) == {"a.txt", "sub/b.txt"}


@pytest.mark.parametrize("name", ["/abs.txt", "../outside.txt", "checksums.sha256"])
def test_export_dataset_rejects_path(tmp_path, name):
    with pytest.raises(DatasetError, match="invalid|written by the dataset"):
        ExportFolderDataset(str(tmp_path / "export")).save({name: b"x"})


def test_quantise_image_bit_depths():
    image = np.array([[0.0, 0.5, 1.0, 1.2]], dtype=np.float16)
    assert quantise_image(image, 8).tolist() == [[0, 128, 255, 255]]
    assert quantise_image(image, 16).tolist() == [[0, 32768, 65535, 65535]]
    with pytest.raises(ValueError, match="8 or 16"):
        quantise_image(image, 12)


def test_png_round_trip_16_bit(tmp_path):
    array = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
    (tmp_path / "x.png").write_bytes(encode_png(array))
    np.testing.assert_array_equal(read_png(tmp_path / "x.png").astype(np.uint16), array)


def test_classification_unlabeled_is_train_only():
    manifest = pd.DataFrame(
        {
            "slice_id": ["a", "b", "c", "d", "e"],
            "source": ["s", "s", "s", "s", "other"],
            "split": ["train", "val", "train", "test", "train"],
            "severity": ["severe", None, None, "ordinary", None],
        }
    )
    params = {"label_column": "severity", "classes": ["ordinary", "severe", "critical"], "sources": ["s"]}
    labeled, unlabeled = select_classification(manifest, params)
    assert labeled["slice_id"].tolist() == ["a", "d"]
    assert labeled["label"].tolist() == ["severe", "ordinary"]
    assert unlabeled["slice_id"].tolist() == ["c"]


def test_classification_empty_string_labels():
    manifest = pd.DataFrame(
        {"severity": pd.array([pd.NA, pd.NA], dtype="string"), "source": ["a", "a"], "split": ["train", "val"]}
    )
    labeled, unlabeled = select_classification(manifest, {"sources": None, "label_column": "severity", "classes": ["ordinary"]})
    assert labeled.empty
    assert unlabeled.index.tolist() == [0]
