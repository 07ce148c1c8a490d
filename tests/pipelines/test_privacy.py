"""The pseudonym key: where it comes from, and where it must never appear."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from kedro.framework.session import KedroSession
from PIL import Image

from lungct_kedro.datasets import ScanSourcesDataset
from lungct_kedro.pipelines.ingestion.nodes import harmonise_sources
from tests.pipelines.conftest import TINY_PARAMS

INGESTION = {"image_size": 32, "window_level_hu": -600, "window_width_hu": 1500, "mask_values": [0, 1, 2]}


def write_folder(folder):
    (folder / "images").mkdir(parents=True)
    Image.fromarray(np.full((16, 16), 90, dtype=np.uint8)).save(folder / "images" / "case-7.png")
    return folder


def test_secret_kept_out_of_repr(tmp_path):
    folder = write_folder(tmp_path / "scans")
    dataset = ScanSourcesDataset(
        sources=[{"name": "scans", "kind": "image_folder", "path": str(folder), "options": {"images": "images"}}],
        pseudonym_secret="very-private-key",
    )
    sources = dataset.load()
    assert sources[0].pseudonym_secret == "very-private-key"
    assert "very-private-key" not in repr(sources[0])
    assert "very-private-key" not in str(dataset)


def test_default_key_warns_for_real_sources(tmp_path, caplog):
    folder = write_folder(tmp_path / "scans")
    sources = ScanSourcesDataset(
        sources=[{"name": "scans", "kind": "image_folder", "path": str(folder), "options": {"images": "images"}}]
    ).load()
    harmonise_sources(sources, {}, INGESTION)
    assert "public default key" in caplog.text
    assert "LUNGCT_PSEUDONYM_SECRET" in caplog.text


def test_own_key_changes_pseudonyms(tmp_path):
    folder = write_folder(tmp_path / "scans")
    entry = {"name": "scans", "kind": "image_folder", "path": str(folder), "options": {"images": "images"}}
    default_manifest, _, _ = harmonise_sources(ScanSourcesDataset(sources=[entry]).load(), {}, INGESTION)
    own_manifest, _, _ = harmonise_sources(
        ScanSourcesDataset(sources=[entry], pseudonym_secret="k1").load(), {}, INGESTION
    )
    assert default_manifest["slice_id"].iloc[0] != own_manifest["slice_id"].iloc[0]


@pytest.mark.slow
def test_environment_key_reaches_manifest(kedro_project, run_pipelines, monkeypatch):
    run_pipelines(["ingestion"])
    manifest_path = kedro_project / "data" / "03_primary" / "slice_manifest.parquet"
    default_ids = pd.read_parquet(manifest_path)["patient_id"]

    monkeypatch.setenv("LUNGCT_PSEUDONYM_SECRET", "site-key-4711")
    run_pipelines(["ingestion"])
    keyed_ids = pd.read_parquet(manifest_path)["patient_id"]
    assert set(default_ids).isdisjoint(set(keyed_ids))

    with KedroSession.create(project_path=kedro_project, runtime_params=TINY_PARAMS) as session:
        parameters = session.load_context().params
    assert "site-key-4711" not in repr(parameters)
    for path in (kedro_project / "data").rglob("*"):
        if path.is_file() and path.suffix in {".json", ".csv", ".parquet"}:
            assert b"site-key-4711" not in path.read_bytes(), f"pseudonym key written to {path}"
