"""Pretraining pipeline runs on the phantom and on the real sample, at tiny sizes."""

from __future__ import annotations

import copy
import json
import math

import pandas as pd
import pytest
import torch
from PIL import Image

from lungct_kedro.models.encoders import build_resnet18_encoder
from tests.pipelines.conftest import TINY_PARAMS

pytestmark = pytest.mark.slow

PIPELINES = ["ingestion", "splits", "pretraining"]

TINY_PRETRAINING = {
    "input_size": 32,
    "projector": {"hidden_dim": 64, "out_dim": 32, "layers": 2},
    "predictor": {"hidden_dim": 16},
    "training": {"iterations": 4, "batch_size": 4, "validate_every": 2, "log_every": 2},
    "collapse": {"monitor_slices": 8},
}

TINY_CLASSIFICATION = {
    "input_size": 32,
    "n_draws": 2,
    "training": {"iterations": 3, "batch_size": 4, "validate_every": 3, "log_every": 3},
}


def tiny_params(budget: dict, **pretraining) -> dict:
    params = copy.deepcopy(TINY_PARAMS)
    params["pretraining"] = {**copy.deepcopy(TINY_PRETRAINING), **pretraining}
    params["classification"] = {**copy.deepcopy(TINY_CLASSIFICATION), "budget": budget}
    params["pretraining"]["transfer"] = {"segmentation": {"iterations": 3, "seeds": [0]}}
    return params


def check_outputs(data, method):
    slices = pd.read_parquet(data / "05_model_input" / "pretraining_slices.parquet")
    split_of = pd.read_parquet(data / "05_model_input" / "split_manifest.parquet").set_index("slice_id")["split"]
    assert set(slices["slice_id"].map(split_of).astype(str)) == {"train"}

    checkpoint = torch.load(data / "06_models" / "pretrained_encoder.pt", weights_only=True)
    assert checkpoint["method"] == method
    assert checkpoint["n_slices"] == len(slices)
    encoder = build_resnet18_encoder(1)
    encoder.load_state_dict(checkpoint["state_dict"])
    assert not math.isnan(checkpoint["final_embedding_std"])

    history = pd.read_csv(data / "08_reporting" / "pretraining_history.csv")
    assert not history["train_loss"].isna().any()
    assert history["embedding_std"].notna().any()
    assert Image.open(data / "08_reporting" / "pretraining_curves.png").size[0] > 300

    reporting = data / "08_reporting"
    table = pd.read_csv(reporting / "transfer_table.csv")
    assert set(table["init"]) == {"scratch", "pretrained"}
    assert set(table["mode"]) == {"linear_probe", "fine_tune"}
    assert (table["n_runs"] == 2).all()
    assert not table[["accuracy_mean", "accuracy_std", "balanced_accuracy_mean"]].isna().any().any()
    assert (table.loc[table["init"] == "scratch", "accuracy_change_abs"] == 0).all()
    runs = pd.read_csv(reporting / "transfer_runs.csv")
    assert len(runs) == 2 * 2 * 2
    summary = json.loads((reporting / "transfer_table.json").read_text())
    assert summary["pretraining_method"] == method
    assert len(summary["table"]) == len(table)
    assert "pretrained / linear_probe" in (reporting / "transfer_table.md").read_text()
    assert Image.open(reporting / "transfer_accuracy.png").size[0] > 300

    segmentation = pd.read_csv(reporting / "segmentation_transfer_table.csv")
    assert segmentation["init"].tolist() == ["scratch", "pretrained"]
    assert not segmentation[["dice_mean", "dice_pooled_mean"]].isna().any().any()
    assert segmentation.loc[segmentation["init"] == "scratch", "dice_change_abs"].iloc[0] == 0
    assert "FlexibleUNet" in (reporting / "segmentation_transfer_table.md").read_text()
    return table


def test_phantom_pretraining_run(run_pipelines, kedro_project):
    run_pipelines(PIPELINES, params=tiny_params({"total": 6}, mask_guided=True))
    history = pd.read_csv(kedro_project / "data" / "08_reporting" / "pretraining_history.csv")
    assert "region_loss" in history
    check_outputs(kedro_project / "data", "simsiam")


def test_real_sample_pretraining_run(run_pipelines, kedro_project, shared_data_dir):
    params = tiny_params({"total": 8}, method="byol")
    params["data_dir"] = str(shared_data_dir)
    run_pipelines(PIPELINES, env="real", params=params)
    data = kedro_project / "data"
    slices = pd.read_parquet(data / "05_model_input" / "pretraining_slices.parquet")
    assert "unlabeled" in set(slices["source"])
    check_outputs(data, "byol")
