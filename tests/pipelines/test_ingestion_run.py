"""Runs of the ingestion pipeline in a temporary Kedro project.

Each test writes ``conf/local/catalog.yml`` so that ``raw_sources`` reads a PNG
folder under the temporary project instead of the phantom.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from kedro.io import DatasetError
from PIL import Image

from lungct_kedro.readers import InvalidSourceError

pytestmark = pytest.mark.slow

LEVELS = [40, 80, 120]
OUTPUT_FILES = ["03_primary", "08_reporting/ingestion_summary.json"]


def save_png(path: Path, values: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(values, dtype=np.uint8)).save(path)
    return path


def write_scans(folder: Path, levels: list[int]) -> Path:
    """Write images/<n>.png (gray ``levels[n]``) with one-class masks of growing width."""
    for number, level in enumerate(levels):
        save_png(folder / "images" / f"{number}.png", np.full((30, 40), level))
        mask = np.zeros((30, 40), dtype=np.uint8)
        mask[10:20, 5 : 10 + 5 * number] = 1
        save_png(folder / "masks" / f"{number}.png", mask)
    return folder


def write_local_catalog(project: Path, scans: Path) -> None:
    catalog = {
        "raw_sources": {
            "type": "lungct_kedro.datasets.ScanSourcesDataset",
            "sources": [
                {
                    "name": "scans",
                    "kind": "image_folder",
                    "path": str(scans),
                    "options": {"images": "images", "masks": "masks", "mask_format": "index"},
                }
            ],
        }
    }
    (project / "conf" / "local" / "catalog.yml").write_text(yaml.safe_dump(catalog))


def snapshot_outputs(data: Path) -> dict[str, bytes]:
    """Return the bytes of every file that ingestion writes, by path under ``data``."""
    files: dict[str, bytes] = {}
    for name in OUTPUT_FILES:
        root = data / name
        paths = [root] if root.is_file() else sorted(root.rglob("*"))
        for path in paths:
            if path.is_file():
                files[path.relative_to(data).as_posix()] = path.read_bytes()
    return files


@pytest.fixture
def first_run(kedro_project, run_pipelines) -> Path:
    """Run ingestion once on three PNG slices and return the project's data folder."""
    scans = write_scans(kedro_project / "inputs" / "scans", LEVELS)
    write_local_catalog(kedro_project, scans)
    run_pipelines(["ingestion"])
    return kedro_project / "data"


def test_run_writes_store_and_manifest(first_run):
    manifest = pd.read_parquet(first_run / "03_primary" / "slice_manifest.parquet")
    attributes = json.loads((first_run / "03_primary" / "slice_store" / "attributes.json").read_text())
    image = np.load(first_run / "03_primary" / "slice_store" / "image.npy")
    mask = np.load(first_run / "03_primary" / "slice_store" / "mask.npy")

    assert len(manifest) == len(LEVELS)
    assert attributes["n_slices"] == len(LEVELS)
    assert image.shape == (len(LEVELS), 64, 64)
    assert manifest["store_index"].tolist() == list(range(len(LEVELS)))
    assert manifest["lesion_pixels"].tolist() == [int(np.count_nonzero(layer)) for layer in mask]


@pytest.mark.parametrize("column", ["slice_id", "volume_id", "patient_id", "source", "source_kind", "content_hash"])
def test_parquet_keeps_text_columns(first_run, column):
    manifest = pd.read_parquet(first_run / "03_primary" / "slice_manifest.parquet")
    assert pd.api.types.is_string_dtype(manifest[column])


def test_run_summary_counts_slices(first_run):
    summary = json.loads((first_run / "08_reporting" / "ingestion_summary.json").read_text())
    assert summary["n_slices"] == len(LEVELS)
    assert summary["sources"]["scans"]["slices_with_mask"] == len(LEVELS)
    assert summary["sources"]["scans"]["skipped_files"] == 0


def test_failed_run_keeps_outputs(first_run, kedro_project, run_pipelines):
    before = snapshot_outputs(first_run)
    scans = kedro_project / "inputs" / "scans"
    # A fourth, valid slice would change the outputs if the run got as far as saving.
    write_scans(scans, LEVELS + [160])
    (scans / "images" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16)

    with pytest.raises(InvalidSourceError) as caught:
        run_pipelines(["ingestion"])

    assert caught.value.path == str(scans / "images" / "1.png")
    after = snapshot_outputs(first_run)
    assert sorted(after) == sorted(before)
    for name in before:
        assert after[name] == before[name], f"{name} changed after a failed run"
    primary = sorted(path.name for path in (first_run / "03_primary").iterdir())
    assert primary == ["slice_manifest.parquet", "slice_store"]


def test_failed_manifest_save_keeps_outputs(first_run, kedro_project, run_pipelines, monkeypatch):
    before = snapshot_outputs(first_run)
    write_scans(kedro_project / "inputs" / "scans", LEVELS + [160])

    def fail_to_parquet(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", fail_to_parquet)
    with pytest.raises(DatasetError, match="slice_manifest"):
        run_pipelines(["ingestion"])
    monkeypatch.undo()

    after = snapshot_outputs(first_run)
    assert sorted(after) == sorted(before)
    store_files = [name for name in before if "/slice_store/" in name]
    assert len(store_files) == 3
    for name in store_files:
        assert after[name] == before[name], f"{name} changed after a failed manifest save"
    manifest = "03_primary/slice_manifest.parquet"
    assert after[manifest] == before[manifest], "the manifest changed after a failed save"
