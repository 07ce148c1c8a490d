"""End-to-end runs of ingestion → splits → segmentation → inference."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from tests.pipelines.conftest import TINY_PARAMS

pytestmark = pytest.mark.slow

ALL_PIPELINES = ["ingestion", "splits", "segmentation", "segmentation_inference"]


def read_json(path):
    return json.loads(path.read_text())


def check_segmentation_outputs(data):
    metrics = read_json(data / "08_reporting" / "segmentation_metrics.json")
    for key in ("dice_mean", "dice_pooled", "iou_mean", "hd95_px_mean", "sensitivity", "specificity"):
        assert isinstance(metrics[key], float)
        assert not math.isnan(metrics[key])
        assert 0.0 <= metrics[key] or key == "hd95_px_mean"
    assert metrics["n_slices"] > 0
    per_slice = pd.read_csv(data / "07_model_output" / "segmentation_test_per_slice.csv")
    assert len(per_slice) == metrics["n_slices"]
    overlay = Image.open(data / "08_reporting" / "segmentation_test_overlays.png")
    assert overlay.size[0] > 300
    assert (data / "06_models" / "segmentation_unet.pt").stat().st_size > 10_000
    return metrics


def test_phantom_default_run(run_pipelines, kedro_project):
    run_pipelines(ALL_PIPELINES)
    data = kedro_project / "data"

    manifest = pd.read_parquet(data / "03_primary" / "slice_manifest.parquet")
    assert len(manifest) == 6 * 3
    assert manifest["patient_id"].nunique() == 6
    assert manifest["has_hu"].all()

    split_manifest = pd.read_parquet(data / "05_model_input" / "split_manifest.parquet")
    assert set(split_manifest["split"]) == {"train", "val", "test"}

    metrics = check_segmentation_outputs(data)
    assert metrics["target"] == "multiclass"
    assert "dice_pooled_ggo" in metrics

    inference = read_json(data / "08_reporting" / "inference_metrics.json")
    masks = sorted((data / "07_model_output" / "inference" / "predicted_masks").glob("*.png"))
    assert inference["n_slices"] == len(masks) == 2 * 3
    assert inference["n_slices_scored"] == len(masks)
    assert not math.isnan(inference["dice_mean"])
    assert Image.open(masks[0]).size == (64, 64)  # phantom slices are generated at 64 px in these runs
    assert (data / "08_reporting" / "inference_overlays.png").stat().st_size > 10_000
    assert set(np.unique(np.array(Image.open(masks[0])))) <= {0, 1, 2}


def test_phantom_run_is_deterministic(run_pipelines, kedro_project):
    run_pipelines(["ingestion", "splits"])
    first = pd.read_parquet(kedro_project / "data" / "05_model_input" / "split_manifest.parquet")
    run_pipelines(["ingestion", "splits"])
    second = pd.read_parquet(kedro_project / "data" / "05_model_input" / "split_manifest.parquet")
    pd.testing.assert_frame_equal(first, second)


def test_real_sample_run(run_pipelines, kedro_project, shared_data_dir):
    params = copy.deepcopy(TINY_PARAMS)
    params["data_dir"] = str(shared_data_dir)
    run_pipelines(ALL_PIPELINES, env="real", params=params)
    data = kedro_project / "data"

    manifest = pd.read_parquet(data / "03_primary" / "slice_manifest.parquet")
    counts = manifest["source"].value_counts()
    assert counts["covid_semiseg"] == 50
    assert counts["unlabeled"] == 155
    assert counts["covid_ct_md"] == 118
    assert set(manifest["diagnosis"].dropna()) == {"COVID-19", "CAP", "Normal"}

    metrics = check_segmentation_outputs(data)
    segmentation = pd.read_parquet(data / "05_model_input" / "segmentation_slices.parquet")
    assert set(segmentation["source"]) == {"covid_semiseg"}
    assert metrics["n_slices"] == (segmentation["split"] == "test").sum()

    inference = read_json(data / "08_reporting" / "inference_metrics.json")
    assert inference["n_slices_scored"] == 0
    masks = list((data / "07_model_output" / "inference" / "predicted_masks").glob("*.png"))
    assert len(masks) == inference["n_slices"] > 100
    inference_manifest = pd.read_parquet(data / "07_model_output" / "inference" / "manifest.parquet")
    for row in inference_manifest.itertuples():
        size = Image.open(data / "07_model_output" / "inference" / "predicted_masks" / f"{row.slice_id}.png").size
        assert size == (row.original_width, row.original_height)

    check_no_identifiers(data, shared_data_dir)


def check_no_identifiers(data, shared_data_dir):
    """No original patient ID, name, date or file name reaches any output."""
    forbidden = {"P001", "cap001", "normal001", "coronacases", "radiopaedia", "98C14734"}
    for path in sorted((shared_data_dir / "classification" / "dicom").rglob("*.dcm"))[:5]:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in ("PatientName", "PatientID", "StudyDate", "SeriesInstanceUID", "StudyInstanceUID"):
            value = str(header.get(keyword, "") or "")
            if len(value) >= 4:
                forbidden.add(value)
    manifest = pd.read_parquet(data / "03_primary" / "slice_manifest.parquet")
    text_outputs = [manifest.to_csv()]
    for path in data.rglob("*"):
        if path.suffix in {".json", ".csv"}:
            text_outputs.append(path.read_text())
        elif path.suffix == ".parquet":
            text_outputs.append(pd.read_parquet(path).to_csv())
        elif path.suffix == ".png":
            text_outputs.append(path.stem)
    everything = "\n".join(text_outputs)
    for value in forbidden:
        assert value not in everything, f"original identifier {value!r} found in outputs"


def test_restored_geometry_inverts_resize():
    from lungct_kedro.imaging.hu import resize_mask, restore_original_geometry

    mask = np.zeros((40, 24), dtype=np.uint8)
    mask[10:30, 4:20] = 2
    stored = resize_mask(mask, 80)
    restored = restore_original_geometry(stored, 40, 24)
    assert restored.shape == (40, 24)
    assert np.array_equal(restored, mask)
