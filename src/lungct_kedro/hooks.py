"""MLflow tracking of Kedro runs through MLflow's own client API.

Each ``kedro run`` opens one parent MLflow run. Each node tagged as training
(``training_tag`` in ``conf/base/tracking.yml``) gets a nested run with its
``params:`` inputs, metrics read from its outputs and the files its outputs
were saved to. The numbers of the summary datasets (test metrics JSONs) go
into the parent run. Settings and what is logged are described in
``docs/tracking.md``.

Tracking never stops a pipeline run: an MLflow error is logged as a warning
and the run carries on.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import re
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from kedro.config import MissingConfigException
from kedro.framework.hooks import hook_impl

logger = logging.getLogger(__name__)

# MLflow 3.17 sends usage telemetry unless MLFLOW_DISABLE_TELEMETRY is true, and
# the project keeps telemetry off, as it does for Kedro's. `import monai` (1.6)
# imports mlflow when it is installed, so settings.py loads this module before
# any pipeline module. A value you set yourself is kept.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

#: Environment variable that switches tracking on or off (read in ``tracking.yml``).
ENABLED_ENV_VAR = "LUNGCT_MLFLOW_ENABLED"
#: MLflow's own variable for the store URI, which replaces ``tracking_uri`` when set.
TRACKING_URI_ENV_VAR = "MLFLOW_TRACKING_URI"
#: Columns that mark a DataFrame as a training history and give the metric step.
STEP_COLUMNS = ("iteration", "epoch")
#: Keys of checkpoint dictionaries that hold tensors, never metrics.
CHECKPOINT_KEY = "state_dict"
#: Artifact folder of the parent run for the summary datasets.
SUMMARY_ARTIFACT_FOLDER = "summaries"
#: After this many MLflow errors in one run, tracking stops for the rest of that run.
MAX_FAILURES_PER_RUN = 5

# MLflow 3.17 accepts only these characters in metric and parameter names
# (mlflow/utils/validation.py), so the others are replaced by "_".
_INVALID_NAME_CHARACTERS = re.compile(r"[^/\w.\- :]")
_TRUE_WORDS = {"true", "1", "yes", "on"}
_FALSE_WORDS = {"false", "0", "no", "off"}
# MLflow's limits (MLflow 3.17): 100 params or tags and 1,000 metrics per log_batch call.
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000


@dataclass(frozen=True)
class TrackingSettings:
    """Resolved tracking settings of one Kedro session.

    Attributes:
        enabled: Whether runs are logged at all.
        tracking_uri: MLflow store URI; a relative SQLite path is already
            resolved against the project root.
        artifact_location: Absolute folder for the artifacts of a newly created
            experiment, or ``None`` to let the store choose (the case when
            ``MLFLOW_TRACKING_URI`` is set).
        experiment_name: MLflow experiment that receives the runs.
        training_tag: Kedro node tag that marks the nodes tracked as nested runs.
        summary_datasets: Datasets whose numbers and file go into the parent run.
        max_artifact_mb: Largest file or folder, in MiB, copied into the store.
    """

    enabled: bool = True
    tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    artifact_location: str | None = None
    experiment_name: str = "lungct_kedro"
    training_tag: str = "training"
    summary_datasets: tuple[str, ...] = ()
    max_artifact_mb: float = 500.0


_SETTING_KEYS = {
    "enabled",
    "tracking_uri",
    "artifact_location",
    "experiment_name",
    "training_tag",
    "summary_datasets",
    "max_artifact_mb",
}


def parse_switch(value: Any, key: str = "enabled") -> bool:
    """Read an on/off setting given as a YAML boolean or as text from an environment variable.

    Raises:
        ValueError: If the value is neither a boolean nor one of true/false,
            1/0, yes/no, on/off (any case).
    """
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ValueError(f"tracking.yml: '{key}' must be true or false, got {value!r}; fix the file or {ENABLED_ENV_VAR}")


def resolve_tracking_uri(uri: str, project_path: Path) -> str:
    """Make the path of a ``sqlite:///`` URI absolute, taking a relative one from the project root.

    Other URIs are returned unchanged. ``sqlite:///relative/path`` is relative
    to the working folder in SQLAlchemy; resolving it here makes a run from any
    folder write to the project's store.
    """
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return uri
    path = Path(uri[len(prefix) :])
    if not path.is_absolute():
        path = project_path / path
    return prefix + path.as_posix()


def load_tracking_settings(config: Mapping[str, Any], project_path: Path, environ: Mapping[str, str]) -> TrackingSettings:
    """Build the tracking settings from the ``tracking`` configuration and the environment.

    Args:
        config: The merged content of ``conf/<env>/tracking.yml``.
        project_path: Project root; relative paths in the settings start there.
        environ: Environment variables; ``MLFLOW_TRACKING_URI`` replaces
            ``tracking_uri`` when set, and the store then decides where
            artifacts go.

    Returns:
        The resolved settings.

    Raises:
        ValueError: If a key is unknown or a value has the wrong type.
    """
    unknown = sorted(set(config) - _SETTING_KEYS)
    if unknown:
        raise ValueError(f"tracking.yml: unknown keys {unknown}; the valid keys are {sorted(_SETTING_KEYS)}")

    defaults = TrackingSettings()
    enabled = parse_switch(config.get("enabled", defaults.enabled))

    summary_datasets = config.get("summary_datasets") or []
    if not isinstance(summary_datasets, list | tuple) or not all(isinstance(name, str) for name in summary_datasets):
        raise ValueError(f"tracking.yml: 'summary_datasets' must be a list of dataset names, got {summary_datasets!r}")

    max_artifact_mb = config.get("max_artifact_mb", defaults.max_artifact_mb)
    if isinstance(max_artifact_mb, bool) or not isinstance(max_artifact_mb, numbers.Real) or max_artifact_mb < 0:
        raise ValueError(f"tracking.yml: 'max_artifact_mb' must be a number of MiB >= 0, got {max_artifact_mb!r}")

    for key in ("tracking_uri", "experiment_name", "training_tag"):
        value = config.get(key, getattr(defaults, key))
        if not isinstance(value, str) or not value:
            raise ValueError(f"tracking.yml: '{key}' must be a non-empty string, got {value!r}")

    environment_uri = environ.get(TRACKING_URI_ENV_VAR)
    if environment_uri:
        tracking_uri = environment_uri
        artifact_location = None
    else:
        tracking_uri = resolve_tracking_uri(config.get("tracking_uri", defaults.tracking_uri), project_path)
        location = config.get("artifact_location")
        artifact_location = str(project_path / location) if location else None

    return TrackingSettings(
        enabled=enabled,
        tracking_uri=tracking_uri,
        artifact_location=artifact_location,
        experiment_name=config.get("experiment_name", defaults.experiment_name),
        training_tag=config.get("training_tag", defaults.training_tag),
        summary_datasets=tuple(summary_datasets),
        max_artifact_mb=float(max_artifact_mb),
    )


def sanitise_name(name: str) -> str:
    """Replace the characters MLflow rejects in metric and parameter names by ``_``."""
    return _INVALID_NAME_CHARACTERS.sub("_", name)


def flatten_params(inputs: Mapping[str, Any], max_value_length: int) -> dict[str, str]:
    """Flatten a node's ``params:`` inputs into MLflow parameters with dotted keys.

    ``params:segmentation`` holding ``{"training": {"iterations": 6}}`` gives
    ``{"segmentation.training.iterations": "6"}``. Lists and other leaves are
    written with ``str``, an empty mapping as ``{}``, and values longer than
    ``max_value_length`` characters are cut to that length. Inputs that are
    not parameters are ignored.
    """
    flat: dict[str, str] = {}

    def add(key: str, value: Any) -> None:
        if isinstance(value, Mapping) and value:
            for child, child_value in value.items():
                add(f"{key}.{child}", child_value)
            return
        flat[sanitise_name(key)] = str(value)[:max_value_length]

    for name, value in inputs.items():
        if name.startswith("params:"):
            add(name.removeprefix("params:"), value)
    return flat


def _as_finite_float(value: Any) -> float | None:
    """Return ``value`` as a float if it is a finite real number (not a bool), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def dict_metrics(prefix: str, data: Mapping[str, Any]) -> dict[str, float]:
    """Collect the finite numbers of a (nested) dictionary as metrics named ``prefix.key.subkey``.

    Lists, strings, tensors and other non-scalars are skipped. A checkpoint
    (a dictionary with a ``state_dict``) gives only its top-level numbers,
    such as ``best_val_score``, because its nested entries repeat settings.
    """
    metrics: dict[str, float] = {}
    is_checkpoint = CHECKPOINT_KEY in data

    def add(key: str, value: Any) -> None:
        if isinstance(value, Mapping):
            if is_checkpoint:
                return
            for child, child_value in value.items():
                add(f"{key}.{child}", child_value)
            return
        number = _as_finite_float(value)
        if number is not None:
            metrics[sanitise_name(key)] = number

    for key, value in data.items():
        add(f"{prefix}.{key}", value)
    return metrics


def step_column(frame: pd.DataFrame) -> str | None:
    """Return the column that makes ``frame`` a training history (``iteration`` or ``epoch``), if any."""
    return next((column for column in STEP_COLUMNS if column in frame.columns), None)


def history_metrics(frame: pd.DataFrame) -> list[tuple[str, float, int]]:
    """Turn a training history table into ``(key, value, step)`` metric points.

    The step is the ``iteration`` (else ``epoch``) column. Every float column
    is a metric. Every other column (text, integers, booleans) names a group,
    so a table that stacks several trainings, as the classification history
    does with ``budget``, ``draw``, ``seed`` and ``method``, gives one curve
    per group: ``draw_0/method_supervised/train_loss``. Missing values (a
    validation score on a step without validation) are skipped.

    Returns:
        Metric points, or an empty list when ``frame`` has no step column.
    """
    step = step_column(frame)
    if step is None:
        return []

    value_columns = [column for column in frame.columns if column != step and pd.api.types.is_float_dtype(frame[column])]
    group_columns = [column for column in frame.columns if column != step and column not in value_columns]

    points: list[tuple[str, float, int]] = []
    for record in frame.to_dict("records"):
        prefix = "".join(f"{column}_{record[column]}/" for column in group_columns)
        for column in value_columns:
            number = _as_finite_float(record[column])
            if number is not None:
                points.append((sanitise_name(f"{prefix}{column}"), number, int(record[step])))
    return points


def output_metrics(outputs: Mapping[str, Any]) -> tuple[list[tuple[str, float, int]], dict[str, float]]:
    """Split a node's outputs into step metrics (history tables) and final metrics (dictionaries).

    Returns:
        The step metric points of every history table and the numbers of
        every dictionary output, keyed ``<dataset>.<key>``.
    """
    steps: list[tuple[str, float, int]] = []
    finals: dict[str, float] = {}
    for name, data in outputs.items():
        if isinstance(data, pd.DataFrame):
            steps.extend(history_metrics(data))
        elif isinstance(data, Mapping):
            finals.update(dict_metrics(name, data))
    return steps, finals


def _described_path(description: Mapping[str, Any]) -> str | None:
    """Find the local file or folder in a dataset's ``_describe()`` output, following wrapped datasets."""
    if description.get("protocol", "file") != "file":
        return None
    for key in ("filepath", "path"):
        if description.get(key):
            return str(description[key])
    inner = description.get("dataset")
    return _described_path(inner) if isinstance(inner, Mapping) else None


def dataset_path(catalog: Any, name: str, project_path: Path) -> Path | None:
    """Return the local file or folder a catalog dataset saves to, or ``None`` if it has none.

    Memory datasets, remote storage and versioned datasets (whose path is a
    folder of versions) give ``None``.
    """
    dataset = catalog.get(name)
    if dataset is None:
        return None
    # NOTE: Kedro 1.7 has no public accessor for a dataset's file. Its own repr
    # uses _describe(), where every file dataset of this project reports its path.
    description = dataset._describe()
    if description.get("version") is not None:
        return None
    raw = _described_path(description)
    if raw is None:
        return None
    path = Path(raw)
    return path if path.is_absolute() else project_path / path


def _size_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(child.stat().st_size for child in path.rglob("*") if child.is_file())


def git_commit(project_path: Path) -> str | None:
    """Return the commit checked out at ``project_path``, or ``None`` outside a Git work tree."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=project_path,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None


def _runner_name(run_params: Mapping[str, Any]) -> str:
    """Return the runner class of a Kedro run, such as ``SequentialRunner``.

    Kedro 1.7 records ``"None"`` when the session picks its default runner
    (sequential) and the runner object's repr when the CLI passes one.
    """
    runner = str(run_params.get("runner") or "")
    if runner in ("", "None"):
        return "SequentialRunner"
    match = re.search(r"\w*Runner", runner)
    return match.group(0) if match else runner


def _now_ms() -> int:
    return int(time.time() * 1000)


class MlflowTrackingHook:
    """Kedro hooks that log every training node of a run to MLflow.

    One instance serves every session of a process (``settings.HOOKS``), so
    the per-run state is reset when a pipeline run starts. Calls into MLflow
    are serialised by a lock, which keeps ``ThreadRunner`` runs consistent.

    NOTE: under ``ParallelRunner`` the node hooks run in worker processes,
    which do not own the MLflow client. Only the parent run is recorded then.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._settings: TrackingSettings | None = None
        self._project_path = Path.cwd()
        self._env = ""
        self._reset_run_state()

    def _reset_run_state(self) -> None:
        self._client: Any = None
        self._experiment_id_of_run = ""
        self._parent_run_id: str | None = None
        self._catalog: Any = None
        self._owner_pid: int | None = None
        self._node_runs: dict[str, str] = {}
        self._pending_outputs: dict[str, set[str]] = {}
        self._failures = 0

    @contextmanager
    def _guard(self, action: str, hint: str = "") -> Iterator[None]:
        """Run a tracking step under the lock; log any error as a warning instead of raising it."""
        with self._lock:
            try:
                yield
            except Exception as error:  # noqa: BLE001 - tracking must never stop a pipeline run
                self._failures += 1
                logger.warning(
                    "MLflow tracking failed while %s (%s: %s); the pipeline run continues.%s",
                    action,
                    type(error).__name__,
                    error,
                    f" {hint}" if hint else "",
                )
                if self._failures >= MAX_FAILURES_PER_RUN and self._parent_run_id is not None:
                    logger.warning("MLflow tracking is off for the rest of this run after %d errors.", self._failures)
                    self._parent_run_id = None
                    self._node_runs.clear()

    @property
    def _active(self) -> bool:
        return self._parent_run_id is not None and self._owner_pid == os.getpid()

    # ---------- context and pipeline ----------

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        """Read the tracking settings of the session's environment."""
        self._settings = None
        self._project_path = Path(context.project_path)
        loader = context.config_loader
        self._env = str(getattr(loader, "env", None) or getattr(loader, "default_run_env", "") or "")

        with self._guard("reading the tracking settings (conf/<env>/tracking.yml)"):
            try:
                config = loader["tracking"]
            except MissingConfigException:
                logger.info("No tracking.yml in the configuration; MLflow tracking is off.")
                return
            settings = load_tracking_settings(config, self._project_path, os.environ)
            if not settings.enabled:
                logger.info("MLflow tracking is off (enabled: false in tracking.yml or %s).", ENABLED_ENV_VAR)
            self._settings = settings

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        """Open the parent MLflow run of this Kedro run."""
        with self._lock:
            self._reset_run_state()
        settings = self._settings
        if settings is None or not settings.enabled:
            return

        hint = (
            f"Check tracking_uri in tracking.yml (or {TRACKING_URI_ENV_VAR}), "
            f"or switch tracking off with {ENABLED_ENV_VAR}=false."
        )
        with self._guard(f"starting the parent run in {settings.tracking_uri}", hint):
            client = self._create_client(settings)
            experiment_id = self._experiment_id(client, settings)
            pipeline_names = run_params.get("pipeline_names") or ["__default__"]
            run_name = f"{'+'.join(pipeline_names)} {datetime.now():%Y-%m-%d %H:%M:%S}"
            run = client.create_run(experiment_id, run_name=run_name, tags=self._parent_tags(run_params, pipeline_names))

            self._client = client
            self._experiment_id_of_run = experiment_id
            self._parent_run_id = run.info.run_id
            self._catalog = catalog
            self._owner_pid = os.getpid()
            logger.info("MLflow run '%s' (%s) in %s", run_name, run.info.run_id, settings.tracking_uri)
            if "ParallelRunner" in _runner_name(run_params):
                logger.info("ParallelRunner: nodes run in other processes, so MLflow records only the parent run.")

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], run_result: Any, pipeline: Any, catalog: Any) -> None:
        """Close the nested runs still open and the parent run as finished."""
        self._close_all("FINISHED")

    @hook_impl
    def on_pipeline_error(self, error: Exception, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        """Mark the open runs as failed."""
        self._close_all("FAILED")

    # ---------- nodes ----------

    @hook_impl
    def before_node_run(self, node: Any, catalog: Any, inputs: dict[str, Any], is_async: bool, run_id: str) -> None:
        """Open a nested run for a training node and log its parameters."""
        settings = self._settings
        if settings is None or not self._active or settings.training_tag not in node.tags:
            return

        with self._guard(f"starting the run of node '{node.name}'"):
            from mlflow.entities import Param
            from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
            from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

            run = self._client.create_run(
                self._experiment_id_of_run,
                run_name=node.name,
                tags={MLFLOW_PARENT_RUN_ID: self._parent_run_id, "kedro.node": node.name, "kedro.env": self._env},
            )
            run_id_mlflow = run.info.run_id
            self._node_runs[node.name] = run_id_mlflow
            self._pending_outputs[node.name] = set(node.outputs)

            params = [Param(key, value) for key, value in flatten_params(inputs, MAX_PARAM_VAL_LENGTH).items()]
            for start in range(0, len(params), _PARAMS_PER_BATCH):
                self._client.log_batch(run_id_mlflow, params=params[start : start + _PARAMS_PER_BATCH])

    @hook_impl
    def after_node_run(
        self, node: Any, catalog: Any, inputs: dict[str, Any], outputs: dict[str, Any], is_async: bool, run_id: str
    ) -> None:
        """Log the metrics found in a training node's outputs."""
        run_id_mlflow = self._node_run(node.name)
        if run_id_mlflow is None:
            return

        with self._guard(f"logging the metrics of node '{node.name}'"):
            self._log_metrics(run_id_mlflow, outputs)
        if not node.outputs:
            self._finish_node(node.name, "FINISHED")

    @hook_impl
    def on_node_error(
        self, error: Exception, node: Any, catalog: Any, inputs: dict[str, Any], is_async: bool, run_id: str
    ) -> None:
        """Mark a failed training node's run as failed."""
        if self._node_run(node.name) is not None:
            self._finish_node(node.name, "FAILED")

    # ---------- datasets ----------

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node: Any) -> None:
        """Log a saved output: as an artifact of its training node, and as a summary of the parent run."""
        settings = self._settings
        if settings is None or not self._active:
            return

        run_id_mlflow = self._node_run(node.name)
        if run_id_mlflow is not None:
            with self._guard(f"logging the file of dataset '{dataset_name}'"):
                self._log_dataset_file(run_id_mlflow, dataset_name, dataset_name)
            with self._lock:
                pending = self._pending_outputs.get(node.name, set())
                pending.discard(dataset_name)
                if not pending:
                    self._finish_node(node.name, "FINISHED")

        if dataset_name in settings.summary_datasets and self._active:
            with self._guard(f"logging the summary dataset '{dataset_name}'"):
                self._log_summary(dataset_name, data)

    # ---------- MLflow calls ----------

    @staticmethod
    def _create_client(settings: TrackingSettings) -> Any:
        from mlflow import MlflowClient

        if settings.tracking_uri.startswith("sqlite:///"):
            Path(settings.tracking_uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # MLflow 3.17 with SQLAlchemy 2.1 warns about MLflow's own "noload"
            # loader when the SQL store starts, which this project cannot fix.
            warnings.filterwarnings("ignore", message=r"The ``noload`` loader strategy", category=DeprecationWarning)
            return MlflowClient(tracking_uri=settings.tracking_uri)

    @staticmethod
    def _experiment_id(client: Any, settings: TrackingSettings) -> str:
        experiment = client.get_experiment_by_name(settings.experiment_name)
        if experiment is not None:
            return experiment.experiment_id
        return client.create_experiment(settings.experiment_name, artifact_location=settings.artifact_location)

    def _parent_tags(self, run_params: Mapping[str, Any], pipeline_names: list[str]) -> dict[str, str]:
        from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT
        from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

        runtime_params = json.dumps(run_params.get("runtime_params") or {}, default=str, sort_keys=True)
        tags = {
            "kedro.env": self._env,
            "kedro.pipelines": ",".join(pipeline_names),
            "kedro.session_id": str(run_params.get("run_id", "")),
            "kedro.version": str(run_params.get("kedro_version", "")),
            "kedro.runner": _runner_name(run_params),
            "kedro.runtime_params": runtime_params[:MAX_TAG_VAL_LENGTH],
        }
        commit = git_commit(self._project_path)
        if commit:
            tags[MLFLOW_GIT_COMMIT] = commit
        return tags

    def _node_run(self, node_name: str) -> str | None:
        with self._lock:
            if not self._active:
                return None
            return self._node_runs.get(node_name)

    def _log_metrics(self, run_id_mlflow: str, outputs: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        timestamp = _now_ms()
        steps, finals = output_metrics(outputs)
        metrics = [Metric(key, value, timestamp, step) for key, value, step in steps]
        metrics += [Metric(key, value, timestamp, 0) for key, value in finals.items()]
        for start in range(0, len(metrics), _METRICS_PER_BATCH):
            self._client.log_batch(run_id_mlflow, metrics=metrics[start : start + _METRICS_PER_BATCH])

    def _log_dataset_file(self, run_id_mlflow: str, dataset_name: str, artifact_folder: str) -> None:
        path = dataset_path(self._catalog, dataset_name, self._project_path)
        if path is None or not path.exists():
            return
        size_mb = _size_bytes(path) / 2**20
        if size_mb > self._settings.max_artifact_mb:
            logger.info(
                "MLflow: %s is %.0f MiB, over max_artifact_mb=%g; not copied into the store.",
                path,
                size_mb,
                self._settings.max_artifact_mb,
            )
            return
        if path.is_dir():
            self._client.log_artifacts(run_id_mlflow, str(path), artifact_path=artifact_folder)
        else:
            self._client.log_artifact(run_id_mlflow, str(path), artifact_path=artifact_folder)

    def _log_summary(self, dataset_name: str, data: Any) -> None:
        from mlflow.entities import Metric

        if isinstance(data, Mapping):
            timestamp = _now_ms()
            metrics = [Metric(key, value, timestamp, 0) for key, value in dict_metrics(dataset_name, data).items()]
            for start in range(0, len(metrics), _METRICS_PER_BATCH):
                self._client.log_batch(self._parent_run_id, metrics=metrics[start : start + _METRICS_PER_BATCH])
        self._log_dataset_file(self._parent_run_id, dataset_name, SUMMARY_ARTIFACT_FOLDER)

    def _finish_node(self, node_name: str, status: str) -> None:
        with self._guard(f"closing the run of node '{node_name}'"):
            run_id_mlflow = self._node_runs.pop(node_name, None)
            self._pending_outputs.pop(node_name, None)
            if run_id_mlflow is not None and self._client is not None:
                self._client.set_terminated(run_id_mlflow, status=status)

    def _close_all(self, status: str) -> None:
        if not self._active:
            with self._lock:
                self._reset_run_state()
            return
        for node_name in list(self._node_runs):
            self._finish_node(node_name, status)
        with self._guard("closing the parent run"):
            self._client.set_terminated(self._parent_run_id, status=status)
        with self._lock:
            self._reset_run_state()
