"""MLflow tracking of Kedro runs: the conversion helpers and tracked pipeline runs in a temporary project."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import yaml
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog
from kedro.pipeline import Node, Pipeline
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from lungct_kedro.hooks import (
    ENABLED_ENV_VAR,
    TRACKING_URI_ENV_VAR,
    MlflowTrackingHook,
    dict_metrics,
    flatten_params,
    history_metrics,
    load_tracking_settings,
    parse_switch,
    resolve_tracking_uri,
)
from lungct_kedro.pipelines.classification.pipeline import create_pipeline as classification_pipeline
from lungct_kedro.pipelines.dehazing.pipeline import create_pipeline as dehazing_pipeline
from lungct_kedro.pipelines.pretraining.pipeline import create_pipeline as pretraining_pipeline
from lungct_kedro.pipelines.segmentation.pipeline import create_pipeline as segmentation_pipeline
from tests.conftest import REPO_ROOT
from tests.pipelines.conftest import TINY_PARAMS

SEGMENTATION_RUN = ["ingestion", "splits", "segmentation"]
TRAINING_NODES = {
    "train_segmentation_model",
    "run_few_shot_experiments",
    "train_dehazing_model",
    "pretrain_ssl_encoder",
    "compare_transfer",
    "compare_segmentation_transfer",
}


# ---------- conversion helpers ----------


def test_flatten_params_dotted_keys():
    inputs = {
        "slice_store": object(),
        "params:segmentation": {
            "training": {"iterations": 6, "learning_rate": 0.02},
            "model": {"channels": [8, 16], "dropout": None},
            "evaluation": {},
        },
        "params:ingestion.image_size": 64,
    }
    assert flatten_params(inputs, max_value_length=100) == {
        "segmentation.training.iterations": "6",
        "segmentation.training.learning_rate": "0.02",
        "segmentation.model.channels": "[8, 16]",
        "segmentation.model.dropout": "None",
        "segmentation.evaluation": "{}",
        "ingestion.image_size": "64",
    }


def test_flatten_params_truncates_values():
    params = flatten_params({"params:notes": "x" * (MAX_PARAM_VAL_LENGTH + 50), "params:short": "abcdefgh"}, 5)
    assert params == {"notes": "xxxxx", "short": "abcde"}

    params = flatten_params({"params:notes": "x" * (MAX_PARAM_VAL_LENGTH + 50)}, MAX_PARAM_VAL_LENGTH)
    assert len(params["notes"]) == MAX_PARAM_VAL_LENGTH


def test_flatten_params_replaces_invalid_characters():
    params = flatten_params({"params:budget": {"total=6": 1}}, 100)
    assert params == {"budget.total_6": "1"}


def test_history_metrics_steps_and_missing_values():
    history = pd.DataFrame(
        {"iteration": [2, 4], "train_loss": [0.5, 0.25], "val_dice": [math.nan, 0.75]},
    )
    assert history_metrics(history) == [
        ("train_loss", 0.5, 2),
        ("train_loss", 0.25, 4),
        ("val_dice", 0.75, 4),
    ]


def test_history_metrics_one_curve_per_group():
    history = pd.DataFrame(
        {
            "iteration": [3, 3, 6],
            "train_loss": [1.0, 2.0, 0.5],
            "budget": ["total=6", "total=6", "total=6"],
            "draw": [0, 1, 0],
        },
    )
    assert history_metrics(history) == [
        ("budget_total_6/draw_0/train_loss", 1.0, 3),
        ("budget_total_6/draw_1/train_loss", 2.0, 3),
        ("budget_total_6/draw_0/train_loss", 0.5, 6),
    ]


def test_history_metrics_epoch_column():
    history = pd.DataFrame({"epoch": [1, 2], "accuracy": [0.5, 0.625]})
    assert history_metrics(history) == [("accuracy", 0.5, 1), ("accuracy", 0.625, 2)]


def test_history_metrics_needs_step_column():
    assert history_metrics(pd.DataFrame({"method": ["a"], "accuracy": [0.5]})) == []


def test_dict_metrics_nested_numbers_only():
    summary = {
        "dice_mean": 0.8,
        "n_slices": 3,
        "is_multiclass": True,
        "target": "multiclass",
        "per_class": {"ggo": 0.5, "consolidation": math.nan},
        "confusion_matrix": [[1, 0], [0, 1]],
    }
    assert dict_metrics("segmentation_metrics", summary) == {
        "segmentation_metrics.dice_mean": 0.8,
        "segmentation_metrics.n_slices": 3.0,
        "segmentation_metrics.per_class.ggo": 0.5,
    }


def test_dict_metrics_checkpoint_top_level_only():
    checkpoint = {"state_dict": {"weight": 1.0}, "model": {"depth": 3}, "best_val_score": 0.7, "iterations": 6}
    assert dict_metrics("segmentation_checkpoint", checkpoint) == {
        "segmentation_checkpoint.best_val_score": 0.7,
        "segmentation_checkpoint.iterations": 6.0,
    }


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sqlite:///mlruns/mlflow.db", "sqlite:////project/mlruns/mlflow.db"),
        ("sqlite:////elsewhere/mlflow.db", "sqlite:////elsewhere/mlflow.db"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ],
)
def test_resolve_tracking_uri(uri, expected):
    assert resolve_tracking_uri(uri, Path("/project")) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (False, False), ("true", True), ("False", False), ("0", False), ("on", True), (" no ", False)],
)
def test_parse_switch(value, expected):
    assert parse_switch(value) is expected


def test_settings_relative_paths_from_project_root():
    settings = load_tracking_settings(
        {"tracking_uri": "sqlite:///store/mlflow.db", "artifact_location": "store/artifacts"},
        Path("/project"),
        environ={},
    )
    assert settings.tracking_uri == "sqlite:////project/store/mlflow.db"
    assert settings.artifact_location == "/project/store/artifacts"


def test_settings_environment_uri_wins():
    settings = load_tracking_settings(
        {"tracking_uri": "sqlite:///store/mlflow.db", "artifact_location": "store/artifacts"},
        Path("/project"),
        environ={TRACKING_URI_ENV_VAR: "sqlite:////other/mlflow.db"},
    )
    assert settings.tracking_uri == "sqlite:////other/mlflow.db"
    assert settings.artifact_location is None


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"enabled": "flase"}, "'enabled' must be true or false"),
        ({"tracking_url": "sqlite:///x.db"}, "unknown keys \\['tracking_url'\\]"),
        ({"max_artifact_mb": -1}, "'max_artifact_mb' must be a number"),
        ({"summary_datasets": "segmentation_metrics"}, "'summary_datasets' must be a list"),
        ({"experiment_name": ""}, "'experiment_name' must be a non-empty string"),
    ],
)
def test_settings_reject_invalid_values(config, message):
    with pytest.raises(ValueError, match=message):
        load_tracking_settings(config, Path("/project"), environ={})


def test_training_nodes_are_tagged():
    pipelines = [segmentation_pipeline(), classification_pipeline(), dehazing_pipeline(), pretraining_pipeline()]
    nodes = [node for pipeline in pipelines for node in pipeline.nodes]
    tagged = {node.name for node in nodes if "training" in node.tags}

    assert TRAINING_NODES <= tagged
    untagged_trainers = [node.name for node in nodes if node.name.startswith("train_") and node.name not in tagged]
    assert untagged_trainers == []


# ---------- the hook and tracked pipeline runs ----------


@pytest.fixture
def tracking_env(monkeypatch):
    """Clear the tracking variables a developer may have set, so the project's tracking.yml applies."""
    monkeypatch.delenv(TRACKING_URI_ENV_VAR, raising=False)
    monkeypatch.delenv(ENABLED_ENV_VAR, raising=False)
    return monkeypatch


def checkout_store_files() -> list[Path]:
    """List the store files of the checkout itself (present after a developer's own runs)."""
    store = REPO_ROOT / "mlruns"
    return sorted(path for path in store.rglob("*") if path.is_file()) if store.exists() else []


def write_local_tracking(project: Path, settings: dict) -> None:
    (project / "conf" / "local" / "tracking.yml").write_text(yaml.safe_dump(settings))


def read_runs(project: Path) -> tuple[MlflowClient, object, list]:
    database = project / "mlruns" / "mlflow.db"
    assert database.is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{database}")
    experiment = client.get_experiment_by_name("lungct_kedro")
    assert experiment is not None
    return client, experiment, client.search_runs([experiment.experiment_id])


def artifact_paths(client: MlflowClient, run_id: str, folder: str) -> dict[str, int]:
    return {item.path: item.file_size for item in client.list_artifacts(run_id, folder)}


def test_missing_tracking_config_switches_off(tmp_path, caplog):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "parameters.yml").write_text("seed: 1\n")
    loader = OmegaConfigLoader(
        conf_source=str(tmp_path),
        base_env="base",
        default_run_env="local",
        config_patterns={"tracking": ["tracking*"]},
    )
    hook = MlflowTrackingHook()

    with caplog.at_level(logging.INFO, logger="lungct_kedro.hooks"):
        hook.after_context_created(SimpleNamespace(project_path=tmp_path, config_loader=loader))
        hook.before_pipeline_run({"pipeline_names": ["toy"]}, Pipeline([]), DataCatalog())

    messages = [record.getMessage() for record in caplog.records if record.name == "lungct_kedro.hooks"]
    assert messages == ["No tracking.yml in the configuration; MLflow tracking is off."]
    assert not (tmp_path / "mlruns").exists()


def test_invalid_tracking_config_warns(tmp_path, caplog):
    hook = MlflowTrackingHook()
    loader = {"tracking": {"enabled": "flase"}}

    with caplog.at_level(logging.INFO, logger="lungct_kedro.hooks"):
        hook.after_context_created(SimpleNamespace(project_path=tmp_path, config_loader=loader))
        hook.before_pipeline_run({"pipeline_names": ["toy"]}, Pipeline([]), DataCatalog())

    records = [record for record in caplog.records if record.name == "lungct_kedro.hooks"]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    assert "'enabled' must be true or false, got 'flase'" in records[0].getMessage()
    assert not (tmp_path / "mlruns").exists()


def fail_training(model: dict) -> pd.DataFrame:
    raise RuntimeError("loss diverged")


def test_failed_node_marks_runs_failed(tmp_path, tracking_env):
    """Drive the hook through Kedro's hook sequence for a training node that raises."""
    hook = MlflowTrackingHook()
    config = {"tracking_uri": "sqlite:///mlruns/mlflow.db", "artifact_location": "mlruns/artifacts"}
    hook.after_context_created(SimpleNamespace(project_path=tmp_path, config_loader={"tracking": config}))
    node = Node(fail_training, "params:model", "history", name="train_toy_model", tags=["training"])
    pipeline = Pipeline([node])
    catalog = DataCatalog()
    inputs = {"params:model": {"depth": 3}}
    run_params = {"pipeline_names": ["toy"], "run_id": "session-1", "runner": "None"}

    hook.before_pipeline_run(run_params, pipeline, catalog)
    hook.before_node_run(node, catalog, inputs, False, "session-1")
    error = RuntimeError("loss diverged")
    hook.on_node_error(error, node, catalog, inputs, False, "session-1")
    hook.on_pipeline_error(error, run_params, pipeline, catalog)

    _, _, runs = read_runs(tmp_path)
    statuses = {run.info.run_name.split()[0]: run.info.status for run in runs}
    assert statuses == {"toy": "FAILED", "train_toy_model": "FAILED"}
    training = next(run for run in runs if run.info.run_name == "train_toy_model")
    assert training.data.params == {"model.depth": "3"}
    assert training.data.tags["kedro.node"] == "train_toy_model"


@pytest.mark.slow
def test_segmentation_run_is_tracked(run_pipelines, kedro_project, tracking_env):
    checkout_before = checkout_store_files()
    run_pipelines(SEGMENTATION_RUN)
    assert checkout_store_files() == checkout_before

    client, experiment, runs = read_runs(kedro_project)
    assert Path(experiment.artifact_location) == kedro_project / "mlruns" / "artifacts"

    parents = [run for run in runs if MLFLOW_PARENT_RUN_ID not in run.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name.startswith("ingestion+splits+segmentation ")
    assert parent.data.tags["kedro.pipelines"] == "ingestion,splits,segmentation"
    assert parent.data.tags["kedro.env"] == "local"

    nested = [run for run in runs if run.data.tags.get(MLFLOW_PARENT_RUN_ID) == parent.info.run_id]
    assert [run.info.run_name for run in nested] == ["train_segmentation_model"]
    training = nested[0]
    assert training.info.status == "FINISHED"

    iterations = TINY_PARAMS["segmentation"]["training"]["iterations"]
    assert training.data.params["segmentation.training.iterations"] == str(iterations)
    assert training.data.params["segmentation.model.channels"] == "[8, 16, 32]"

    data = kedro_project / "data"
    history = pd.read_csv(data / "08_reporting" / "segmentation_history.csv")
    loss = client.get_metric_history(training.info.run_id, "train_loss")
    assert [point.step for point in loss] == history["iteration"].tolist()
    assert len(loss) == iterations // TINY_PARAMS["segmentation"]["training"]["log_every"]
    assert [point.value for point in loss] == pytest.approx(history["train_loss"].tolist())
    checkpoint = data / "06_models" / "segmentation_unet.pt"
    best_val_score = torch.load(checkpoint, map_location="cpu", weights_only=True)["best_val_score"]
    assert training.data.metrics["segmentation_checkpoint.best_val_score"] == pytest.approx(best_val_score)

    assert artifact_paths(client, training.info.run_id, "segmentation_checkpoint") == {
        "segmentation_checkpoint/segmentation_unet.pt": checkpoint.stat().st_size
    }
    assert "segmentation_training_curves/segmentation_training_curves.png" in artifact_paths(
        client, training.info.run_id, "segmentation_training_curves"
    )

    metrics = json.loads((data / "08_reporting" / "segmentation_metrics.json").read_text())
    assert parent.data.metrics["segmentation_metrics.dice_mean"] == pytest.approx(metrics["dice_mean"])
    assert "summaries/segmentation_metrics.json" in artifact_paths(client, parent.info.run_id, "summaries")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "pipelines"),
    [
        ("unsupported_uri_scheme", ["ingestion", "splits"]),
        ("store_folder_is_a_file", ["ingestion", "splits"]),
        ("artifact_folder_is_a_file", SEGMENTATION_RUN),
    ],
)
def test_failing_backend_only_warns(run_pipelines, kedro_project, tracking_env, caplog, case, pipelines):
    blocker = kedro_project / "blocker"
    blocker.write_text("a file where the store expects a folder")
    if case == "unsupported_uri_scheme":
        tracking_env.setenv(TRACKING_URI_ENV_VAR, "nosuchscheme://store")
    elif case == "store_folder_is_a_file":
        write_local_tracking(kedro_project, {"tracking_uri": "sqlite:///blocker/mlflow.db"})
    else:
        write_local_tracking(kedro_project, {"artifact_location": "blocker/artifacts"})

    with caplog.at_level(logging.WARNING, logger="lungct_kedro.hooks"):
        run_pipelines(pipelines)

    assert (kedro_project / "data" / "05_model_input" / "split_manifest.parquet").is_file()
    warnings = [record for record in caplog.records if record.name == "lungct_kedro.hooks"]
    assert warnings
    assert all(record.levelno == logging.WARNING for record in warnings)
    assert all("the pipeline run continues" in record.getMessage() for record in warnings)

    if case == "artifact_folder_is_a_file":
        assert (kedro_project / "data" / "06_models" / "segmentation_unet.pt").is_file()
        client, _, runs = read_runs(kedro_project)
        training = next(run for run in runs if run.info.run_name == "train_segmentation_model")
        assert training.data.params["segmentation.training.iterations"] == "6"
        assert client.get_metric_history(training.info.run_id, "train_loss")
        assert training.info.status == "FINISHED"


@pytest.mark.slow
@pytest.mark.parametrize("switch", ["environment", "config"])
def test_switched_off_writes_nothing(run_pipelines, kedro_project, tracking_env, switch):
    if switch == "environment":
        tracking_env.setenv(ENABLED_ENV_VAR, "false")
    else:
        write_local_tracking(kedro_project, {"enabled": False})

    run_pipelines(SEGMENTATION_RUN)

    assert (kedro_project / "data" / "06_models" / "segmentation_unet.pt").is_file()
    assert not (kedro_project / "mlruns").exists()
    assert list(kedro_project.rglob("*.db")) == []
