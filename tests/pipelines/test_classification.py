"""Classification pipeline runs on the phantom and on the real sample, at tiny sizes."""

from __future__ import annotations

import copy
import json
import math

import pandas as pd
import pytest
import torch
from PIL import Image

from tests.pipelines.conftest import TINY_PARAMS

pytestmark = pytest.mark.slow

PIPELINES = ["ingestion", "splits", "classification"]

TINY_CLASSIFICATION = {
    "input_size": 32,
    "n_draws": 2,
    "training": {"iterations": 4, "batch_size": 4, "validate_every": 2, "log_every": 2},
    "mean_teacher": {"unlabeled_batch_size": 4, "rampup_iterations": 2},
}

METHODS = ("majority", "supervised", "mean_teacher")


def tiny_params(**classification) -> dict:
    params = copy.deepcopy(TINY_PARAMS)
    params["classification"] = {**copy.deepcopy(TINY_CLASSIFICATION), **classification}
    return params


def check_outputs(data, classes, n_draws):
    reporting = data / "08_reporting"
    summary = json.loads((reporting / "classification_metrics.json").read_text())
    assert summary["classes"] == classes
    results = next(iter(summary["results"].values()))
    assert set(results) == set(METHODS)
    for method in METHODS:
        entry = results[method]
        assert entry["n_runs"] == n_draws
        for metric in ("accuracy", "balanced_accuracy", "macro_f1"):
            for statistic in ("mean", "std"):
                value = entry[metric][statistic]
                assert not math.isnan(value), f"{method} {metric} {statistic} is NaN"
                assert 0.0 <= value <= 1.0
        assert entry["recall"], f"{method} reports no per-class recall"
        for name, recall in entry["recall"].items():
            assert not math.isnan(recall["mean"]), f"{method} recall of {name} is NaN"
        assert sum(map(sum, entry["confusion_matrix_summed"])) == n_draws * summary["n_evaluation_slices"]

    runs = pd.read_csv(reporting / "classification_runs.csv")
    assert len(runs) == n_draws * len(METHODS)
    assert not runs[["accuracy", "balanced_accuracy", "macro_f1"]].isna().any().any()
    table = (reporting / "classification_results.md").read_text()
    assert "mean_teacher" in table
    for name in ("classification_confusion_matrices.png", "classification_accuracy.png"):
        assert Image.open(reporting / name).size[0] > 300
    assert (reporting / "classification_history.csv").stat().st_size > 0

    for method in ("supervised", "mean_teacher"):
        checkpoint = torch.load(data / "06_models" / f"classification_{method}.pt", weights_only=True)
        assert checkpoint["method"] == method
        assert checkpoint["classes"] == classes
        assert any(key.startswith("encoder.") for key in checkpoint["state_dict"])
        assert checkpoint["state_dict"]["head.weight"].shape[0] == len(classes)
    return summary


def check_draws(data):
    slices = pd.read_parquet(data / "05_model_input" / "classification_slices.parquet")
    draws = pd.read_parquet(data / "05_model_input" / "classification_draws.parquet")
    split_of = slices.set_index("slice_id")["split"]
    assert set(draws["slice_id"].map(split_of)) == {"train"}
    labeled = draws[draws["role"] == "labeled"]
    assert labeled["label"].notna().all()
    return slices, draws


def test_phantom_classification_runs(run_pipelines, kedro_project):
    run_pipelines(PIPELINES, params=tiny_params(budget={"total": 6}))
    data = kedro_project / "data"
    summary = check_outputs(data, ["ordinary", "severe", "critical"], n_draws=2)
    assert summary["evaluation_split"] == "test"
    _, draws = check_draws(data)
    for draw, table in draws[draws["role"] == "labeled"].groupby("draw"):
        assert len(table) == 6, f"draw {draw} has {len(table)} labeled slices"
        assert table["label"].nunique() == 3, f"draw {draw} misses a class"

    # The transformer, with a per-class budget, on the same slice store.
    params = tiny_params(budget={"total": None, "per_class": 2}, n_draws=1, model={"architecture": "vit_b8"})
    params["classification"]["training"].update(optimizer="adam", learning_rate=1.0e-3)
    run_pipelines(["classification"], params=params)
    check_outputs(data, ["ordinary", "severe", "critical"], n_draws=1)
    checkpoint = torch.load(data / "06_models" / "classification_supervised.pt", weights_only=True)
    assert checkpoint["model"]["architecture"] == "vit_b8"
    assert "encoder.conv_proj.weight" in checkpoint["state_dict"]
    draws = pd.read_parquet(data / "05_model_input" / "classification_draws.parquet")
    assert draws.loc[draws["role"] == "labeled", "label"].value_counts().to_dict() == {
        "ordinary": 2,
        "severe": 2,
        "critical": 2,
    }


def test_real_sample_classification_run(run_pipelines, kedro_project, shared_data_dir):
    params = tiny_params(budget={"total": 8})
    params["data_dir"] = str(shared_data_dir)
    run_pipelines(PIPELINES, env="real", params=params)
    data = kedro_project / "data"
    summary = check_outputs(data, ["0", "1"], n_draws=2)
    assert summary["label_column"] == "slice_infection"
    slices, draws = check_draws(data)
    assert set(slices["source"]) == {"covid_ct_md", "unlabeled"}
    pool_sources = slices.set_index("slice_id").loc[draws.loc[draws["role"] == "pool", "slice_id"], "source"]
    assert "unlabeled" in set(pool_sources)
