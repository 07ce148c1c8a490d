"""Runs of ingestion → splits → curation → dehazing on the phantom and on the real sample."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from PIL import Image

from lungct_kedro.models.enhancement import build_enhancement_model
from lungct_kedro.pipelines.dehazing.nodes import METHODS
from tests.pipelines.conftest import TINY_PARAMS

pytestmark = pytest.mark.slow

PIPELINES = ["ingestion", "splits", "curation", "dehazing"]
TINY_DEHAZING: dict[str, Any] = {
    "degradation": {"low_dose": {"n_angles": 30}},
    "model": {"depth": 3, "features": 8},
    "training": {"iterations": 4, "batch_size": 4, "validate_every": 2, "log_every": 2},
    "evaluation": {"n_eval_pairs": 4, "n_no_reference": 6, "figure_rows": 2},
}
OUTPUTS = [
    "05_model_input/dehazing_slices.parquet",
    "06_models/dehazing_network.pt",
    "07_model_output/dehazing_test_per_slice.csv",
    "08_reporting/dehazing_metrics.json",
    "08_reporting/dehazing_no_reference.csv",
    "08_reporting/dehazing_history.csv",
    "08_reporting/dehazing_training_curves.png",
    "08_reporting/dehazing_before_after.png",
    "08_reporting/dehazing_no_reference_examples.png",
]


def tiny_params(**extra: Any) -> dict[str, Any]:
    params = copy.deepcopy(TINY_PARAMS)
    params["dehazing"] = copy.deepcopy(TINY_DEHAZING)
    params.update(extra)
    return params


def numbers(value: Any) -> list[float]:
    """Collect every number in a nested JSON value."""
    if isinstance(value, dict):
        return [number for item in value.values() for number in numbers(item)]
    if isinstance(value, list):
        return [number for item in value for number in numbers(item)]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)]
    return []


def check_common_outputs(data: Path) -> dict[str, Any]:
    for relative in OUTPUTS:
        assert (data / relative).is_file(), f"missing output {relative}"
    metrics = json.loads((data / "08_reporting" / "dehazing_metrics.json").read_text())
    assert metrics["data_range"] == 1.0
    assert not any(math.isnan(number) for number in numbers(metrics))
    assert metrics["methods"] == list(METHODS)
    for set_name, summary in metrics["reference_sets"].items():
        assert summary["n_pairs"] > 0, set_name
        assert sorted(summary["methods"]) == sorted(METHODS), set_name
        assert summary["methods"]["input"]["psnr_change_db_mean"] == 0.0

    per_slice = pd.read_csv(data / "07_model_output" / "dehazing_test_per_slice.csv")
    assert set(per_slice["method"]) == set(METHODS)
    assert per_slice[["psnr_db", "ssim", "psnr_change_db", "ssim_change"]].notna().all().all()
    assert per_slice["ssim"].between(-1.0, 1.0).all()

    checkpoint = torch.load(data / "06_models" / "dehazing_network.pt", weights_only=True)
    assert checkpoint["model"]["architecture"] == metrics["architecture"]
    model = build_enhancement_model(checkpoint["model"])
    model.load_state_dict(checkpoint["state_dict"])
    assert checkpoint["monitor"] == "val_psnr"

    history = pd.read_csv(data / "08_reporting" / "dehazing_history.csv")
    assert history["val_psnr"].notna().sum() == 2
    assert Image.open(data / "08_reporting" / "dehazing_before_after.png").size[0] > 500
    return metrics


def test_phantom_dehazing_run(run_pipelines, kedro_project):
    run_pipelines(PIPELINES, params=tiny_params())
    data = kedro_project / "data"
    metrics = check_common_outputs(data)

    assert set(metrics["reference_sets"]) == {"synthetic_test", "phantom_twin"}
    slices = pd.read_parquet(data / "05_model_input" / "dehazing_slices.parquet")
    assert {"train", "val_pair", "test_pair", "twin_test"} <= set(slices["role"])
    train = set(slices.loc[slices["role"] == "train", "slice_id"])
    held_out = set(slices.loc[slices["role"].isin(["val_pair", "test_pair", "twin_test"]), "slice_id"])
    assert not train & held_out
    per_slice = pd.read_csv(data / "07_model_output" / "dehazing_test_per_slice.csv")
    assert per_slice.loc[per_slice["set"] == "synthetic_test", "faults"].str.len().min() > 0


def test_real_sample_dehazing_run(run_pipelines, kedro_project, shared_data_dir):
    params = tiny_params(data_dir=str(shared_data_dir))
    params["dehazing"]["model"] = {"architecture": "residual_unet", "channels": [8, 16, 32], "num_res_units": 0}
    run_pipelines(PIPELINES, env="real", params=params)
    data = kedro_project / "data"
    metrics = check_common_outputs(data)

    assert set(metrics["reference_sets"]) == {"synthetic_test"}
    no_reference = pd.read_csv(data / "08_reporting" / "dehazing_no_reference.csv")
    assert metrics["no_reference"]["n_slices"] == 6
    assert set(no_reference["method"]) == set(METHODS[1:])
    assert no_reference[["noise_sigma_change", "rms_contrast_change"]].notna().all().all()
    slices = pd.read_parquet(data / "05_model_input" / "dehazing_slices.parquet")
    flagged = set(slices.loc[slices["role"] == "no_reference", "slice_id"])
    assert not flagged & set(slices.loc[slices["role"] == "train", "slice_id"])
