"""Segmentation methods compared by grouped k-fold cross-validation over seeds, at one CPU budget per run.

Run from the project root::

    make benchmark-segmentation                                  # phantom and DATA_DIR
    .venv/bin/python benchmarks/segmentation_methods.py --quick  # smoke test, a few minutes

For each dataset the script does three things. It runs the ingestion and
splits pipelines in a scratch copy of the project under ``data/benchmarks/``
to build a slice store and split manifest, which later calls reuse while the
settings and configuration are unchanged. The pretraining pipeline trains
the self-supervised encoder there once (``segmentation_methods_setup``). It trains
and scores every method on every fold of every seed, each training run
stopped after the same process CPU time. Finally it saves the per-run rows
and the summary table through this project's catalog
(``conf/base/catalog_segmentation_methods.yml``) and replaces the marked
section of ``docs/benchmarks.md`` (``segmentation_methods_report``).

Every score is the Dice of the lesion mask (any class) against background
on the held-out fold, per slice (mean over slices) and pooled, computed by
``lungct_kedro.training.metrics`` for every method alike. A method whose
parameters or arguments the training code does not support yet is listed as
skipped with the reason.
"""

from __future__ import annotations

import os

# OpenMP threads that wait for work spin by default, and that spinning counts as process CPU
# time, most of all when other processes share the cores. The budget must count work, so idle
# threads sleep instead. This has to be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# MONAI imports MLflow where it is installed, and MLflow then writes a telemetry file on import.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import argparse  # noqa: E402
import datetime  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Mapping, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from minimal_unet import predict_minimal_unet, train_minimal_unet  # noqa: E402
from segmentation_methods_report import (  # noqa: E402
    markdown_report,
    replace_docs_section,
    load_saved_table,
    save_markdown,
    save_outputs,
    summary_table,
)
from segmentation_methods_setup import (  # noqa: E402
    DATASETS,
    METHODS,
    ROOT,
    MethodSpec,
    PreparedDataset,
    Settings,
    deep_merge,
    method_params,
    prepare_dataset,
    unsupported_reason,
)

from lungct_kedro.datasets.atomic import atomic_file  # noqa: E402
from lungct_kedro.datasets.slice_store import SliceStore  # noqa: E402
from lungct_kedro.training import segmentation as segmentation_training  # noqa: E402
from lungct_kedro.training.cross_validation import (  # noqa: E402
    Fold,
    apply_intensity_threshold,
    fit_intensity_threshold,
    grouped_folds,
    score_lesion_masks,
)

#: Validations per pipeline training run (their spacing comes from the probe's cost per iteration).
VALIDATIONS_PER_RUN = 4
#: ``training.iterations`` is set to this many times the count the probe expects within the
#: budget, so the budget stops training while settings counted in iterations (such as the
#: Mean Teacher ramp-up) keep about their share of the run.
ITERATION_MARGIN = 2.0
#: Share of its threads' cores that a CPU training run keeps busy, for the first time estimate only
#: (an estimate for 128 px U-Nets on 2 cores, not a measurement).
PARALLEL_EFFICIENCY = 0.75
#: Defaults of a full comparison, each replaced by its command-line option where one is given.
FULL_DEFAULTS: dict[str, Any] = {
    "folds": 3,
    "seeds": [0, 1, 2],
    "cpu_budget_s": 40.0,
    "image_size": 128,
    "docs_output": ROOT / "docs" / "benchmarks.md",
    "scratch_dir": ROOT / "data" / "benchmarks" / "full",
    "probe_iterations": 10,
    "phantom": {"n_patients": 12, "slices_per_patient": 8, "unlabeled_patients": 6},
    "pretraining": {},
}
#: Defaults of ``--quick``: small enough for a smoke test of a few minutes; the page is left unchanged.
QUICK_DEFAULTS: dict[str, Any] = {
    "folds": 2,
    "seeds": [0, 1],
    "cpu_budget_s": 2.0,
    "image_size": 64,
    "docs_output": None,
    "scratch_dir": ROOT / "data" / "benchmarks" / "quick",
    "probe_iterations": 2,
    "phantom": {"n_patients": 6, "slices_per_patient": 3, "unlabeled_patients": 2, "low_quality": {"n_angles": 30}},
    "pretraining": {
        "training": {"iterations": 4, "batch_size": 8, "validate_every": 2, "log_every": 2},
        "collapse": {"monitor_slices": 8},
    },
}
#: ``log_every`` of benchmark runs: no per-iteration log lines, one progress line per run instead.
NO_LOGS = 10**9

# ---------------------------------------------------------------- one run of each kind


@dataclass
class RunOutcome:
    """Scores and costs of one trained (or fitted) model on one test fold."""

    dice_mean: float
    dice_pooled: float
    cpu_seconds: float
    wall_seconds: float
    iterations: float = float("nan")
    threshold: float = float("nan")
    stopped_by: str = ""


def fold_rows(dataset: PreparedDataset, fold: Fold) -> dict[str, np.ndarray]:
    """Map a fold's positions to store rows."""
    rows = dataset.labeled["store_index"].to_numpy(np.int64)
    return {"train": rows[fold.train], "val": rows[fold.val], "test": rows[fold.test]}


def reference_masks(store: SliceStore, rows: np.ndarray) -> np.ndarray:
    """Read reference class maps of store rows."""
    return np.asarray(store.arrays["mask"][rows], dtype=np.uint8)


def run_threshold(dataset: PreparedDataset, rows: Mapping[str, np.ndarray]) -> RunOutcome:
    """Fit the intensity threshold on train + val and score it on the test fold."""
    cpu, wall = time.process_time(), time.perf_counter()
    fit_rows = np.sort(np.concatenate([rows["train"], rows["val"]]))
    threshold = fit_intensity_threshold(
        np.asarray(dataset.store.arrays["image"][fit_rows], dtype=np.float32), reference_masks(dataset.store, fit_rows)
    )
    predictions = apply_intensity_threshold(np.asarray(dataset.store.arrays["image"][rows["test"]]), threshold)
    scores = score_lesion_masks(predictions, reference_masks(dataset.store, rows["test"]))
    return RunOutcome(
        scores["dice_mean"], scores["dice_pooled"], time.process_time() - cpu, time.perf_counter() - wall, threshold=threshold
    )


def run_minimal(dataset: PreparedDataset, rows: Mapping[str, np.ndarray], seed: int, settings: Settings) -> RunOutcome:
    """Train the minimal-loop U-Net on the train rows (val unused) and score it on the test fold."""
    params = dataset.segmentation_params
    binary = params["target"] == "binary"
    cpu, wall = time.process_time(), time.perf_counter()
    masks = reference_masks(dataset.store, rows["train"])
    model, run = train_minimal_unet(
        np.asarray(dataset.store.arrays["image"][rows["train"]], dtype=np.float32),
        (masks > 0).astype(np.uint8) if binary else masks,
        channels=params["model"]["channels"],
        num_res_units=int(params["model"].get("num_res_units", 2)),
        num_classes=2 if binary else 3,
        batch_size=int(params["training"]["batch_size"]),
        learning_rate=float(params["training"]["learning_rate"]),
        momentum=float(params["training"]["momentum"]),
        weight_decay=float(params["training"]["weight_decay"]),
        cpu_budget_s=settings.cpu_budget_s,
        seed=seed,
    )
    predictions = predict_minimal_unet(model, np.asarray(dataset.store.arrays["image"][rows["test"]], dtype=np.float32))
    scores = score_lesion_masks(predictions, reference_masks(dataset.store, rows["test"]))
    return RunOutcome(
        scores["dice_mean"],
        scores["dice_pooled"],
        time.process_time() - cpu,
        time.perf_counter() - wall,
        iterations=run.iterations,
        stopped_by="cpu_time_budget",
    )


def training_arguments(
    method: MethodSpec, dataset: PreparedDataset, rows: Mapping[str, np.ndarray]
) -> dict[str, Any]:
    """Return the keyword arguments of ``train_segmentation`` that the method needs, and only those."""
    arguments: dict[str, Any] = {}
    if method.unlabeled:
        arguments["unlabeled_indices"] = dataset.unlabeled_rows
    if method.class_targets:
        # Held-out slices keep their class labels out of training, like their masks.
        held_out = np.concatenate([rows["val"], rows["test"]])
        usable = dataset.class_rows[~dataset.class_rows["store_index"].isin(held_out)]
        arguments["class_targets"] = dict(zip(usable["store_index"].tolist(), usable["class_index"].tolist()))
    if method.ssl_encoder:
        arguments["init_encoder_state"] = dataset.encoder["state_dict"]
    return arguments


def prediction_arguments(params: Mapping[str, Any]) -> dict[str, Any]:
    """Return the ``predict_class_maps`` keywords for flip TTA and post-processing."""
    inference = params.get("inference", {})
    return {"flip_tta": bool(inference.get("flip_tta", False)), "postprocess": inference.get("postprocess")}


def run_params(
    params: Mapping[str, Any], seed: int, settings: Settings, cpu_per_iteration: float
) -> tuple[dict[str, Any], int]:
    """Set seed, device, iterations and CPU budget of one pipeline training run.

    Validations are spaced so that about ``VALIDATIONS_PER_RUN`` fit in the
    budget, going by the probe's cost of an iteration.

    Returns:
        The parameters and the expected number of iterations.
    """
    expected = max(1, int(settings.cpu_budget_s / max(cpu_per_iteration, 1e-6)))
    cap = max(2, int(expected * ITERATION_MARGIN))
    training = {
        "cpu_time_budget_s": settings.cpu_budget_s,
        "iterations": cap,
        "validate_every": max(1, expected // VALIDATIONS_PER_RUN),
        "log_every": NO_LOGS,
    }
    overrides: dict[str, Any] = {"seed": seed, "device": "cpu", "training": training}
    teacher = params.get("mean_teacher") or {}
    configured = int(params["training"]["iterations"])
    if teacher.get("rampup_iterations") is not None:
        # The training code takes the ramp-up's share of the run as rampup_iterations / iterations,
        # so scaling both keeps the configured share.
        share = float(teacher["rampup_iterations"]) / configured
        overrides.setdefault("mean_teacher", {})["rampup_iterations"] = max(1, round(share * cap))
    if teacher.get("ema_decay") is not None:
        overrides.setdefault("mean_teacher", {})["ema_decay"] = scaled_ema_decay(
            float(teacher["ema_decay"]), configured, cap
        )
    return deep_merge(params, overrides), expected


def scaled_ema_decay(decay: float, configured_iterations: int, iterations: int) -> float:
    """Return the EMA decay whose averaging horizon is the same share of ``iterations`` as ``decay``'s of the configured run.

    The teacher averages the student over about ``1 / (1 − decay)`` steps. A
    horizon of 100 steps suits the configured 1,000 iterations, but a budgeted
    run of about 130 steps would leave a third of the teacher at its random
    initial weights (0.99 ** 130 ≈ 0.27). The decay never exceeds the
    configured one.
    """
    horizon_share = 1.0 / (1.0 - decay) / configured_iterations
    horizon = max(1.0, horizon_share * iterations)
    return min(decay, 1.0 - 1.0 / horizon)


def calibrate(
    method: MethodSpec, dataset: PreparedDataset, params: Mapping[str, Any], rows: Mapping[str, np.ndarray], settings: Settings
) -> float:
    """Measure the CPU seconds of one training iteration of ``method`` with a short run without validation.

    The loop's own CPU count is used, so building the network is left out.
    """
    iterations = settings.probe_iterations
    probe = deep_merge(
        params,
        {"seed": 0, "device": "cpu", "training": {"iterations": iterations, "validate_every": iterations, "log_every": NO_LOGS}},
    )
    probe["training"].pop("cpu_time_budget_s", None)
    _, result = segmentation_training.train_segmentation(
        dataset.store, rows["train"], np.zeros(0, dtype=np.int64), probe, **training_arguments(method, dataset, rows)
    )
    return result.cpu_seconds / result.iterations_run


def run_pipeline(
    method: MethodSpec,
    variants: Sequence[MethodSpec],
    dataset: PreparedDataset,
    rows: Mapping[str, np.ndarray],
    seed: int,
    settings: Settings,
    cpu_per_iteration: float,
) -> dict[str, RunOutcome]:
    """Train one pipeline model and score it, and its inference-only variants, on the test fold.

    Returns:
        Method name → outcome, for ``method`` and each variant. A variant's
        CPU and wall time are the training's plus its own prediction.
    """
    params, _ = run_params(method_params(method, dataset.spec, dataset.segmentation_params), seed, settings, cpu_per_iteration)
    cpu, wall = time.process_time(), time.perf_counter()
    model, result = segmentation_training.train_segmentation(
        dataset.store, rows["train"], rows["val"], params, **training_arguments(method, dataset, rows)
    )
    train_cpu, train_wall = time.process_time() - cpu, time.perf_counter() - wall
    device = next(model.parameters()).device
    references = reference_masks(dataset.store, rows["test"])

    outcomes = {}
    for spec in (method, *variants):
        spec_params = method_params(spec, dataset.spec, params)
        keywords = prediction_arguments(spec_params) if spec.predict_options else {}
        cpu, wall = time.process_time(), time.perf_counter()
        predictions = segmentation_training.predict_class_maps(model, dataset.store, rows["test"], device, **keywords)
        scores = score_lesion_masks(predictions, references)
        outcomes[spec.name] = RunOutcome(
            scores["dice_mean"],
            scores["dice_pooled"],
            train_cpu + time.process_time() - cpu,
            train_wall + time.perf_counter() - wall,
            iterations=float(result.iterations_run),
            stopped_by=result.stopped_by,
        )
    return outcomes


# ---------------------------------------------------------------- the comparison


class Progress:
    """Print one line per finished run with the elapsed time and an estimate of the rest."""

    def __init__(self, total_trained: int, seconds_per_run: float) -> None:
        self.total = total_trained
        self.done = 0
        self.guess = seconds_per_run
        self.started = time.perf_counter()
        self.trained_wall = 0.0

    def drop(self, runs: int) -> None:
        """Take runs that will not happen (skipped or failed methods) out of the total."""
        self.total = max(self.total - runs, self.done)

    def report(self, text: str, trained: bool, wall_seconds: float) -> None:
        """Print one run's line; ``trained`` runs count towards the total and the time estimate."""
        if trained:
            self.done += 1
            self.trained_wall += wall_seconds
        per_run = self.trained_wall / self.done if self.done else self.guess
        remaining = max(self.total - self.done, 0) * per_run
        elapsed = time.perf_counter() - self.started
        print(f"[{self.done:>3}/{self.total}] {text}; elapsed {clock(elapsed)}, ETA {clock(remaining)}", flush=True)


def expected_run_seconds(settings: Settings) -> float:
    """Estimate the wall time of one training run before any has finished.

    Assumes that the torch threads keep PARALLEL_EFFICIENCY of their cores
    busy, plus a few seconds of set-up and test prediction per run. Once runs
    finish, the progress lines use their measured mean instead.
    """
    return settings.cpu_budget_s / (PARALLEL_EFFICIENCY * settings.threads) + 3.0


def clock(seconds: float) -> str:
    """Format seconds as h:mm:ss."""
    return str(datetime.timedelta(seconds=int(round(seconds))))


def plan_methods(
    dataset: PreparedDataset, selected: Sequence[str]
) -> tuple[list[tuple[MethodSpec, list[MethodSpec], bool]], dict[str, str]]:
    """Decide which methods run on ``dataset`` and how trained models are shared.

    Returns:
        Jobs as (method to train or fit, inference variants of its model,
        whether the method's own rows are recorded), and skipped method
        name → reason.
    """
    by_name = {method.name: method for method in METHODS}
    skipped = {}
    for name in selected:
        reason = unsupported_reason(by_name[name], dataset, by_name)
        if reason:
            skipped[name] = reason
    runnable = [name for name in selected if name not in skipped]
    jobs = []
    bases = [name for name in runnable if not by_name[name].reuse_model_of]
    bases += sorted({by_name[name].reuse_model_of for name in runnable if by_name[name].reuse_model_of} - set(bases))
    for base in bases:
        variants = [by_name[name] for name in runnable if by_name[name].reuse_model_of == base]
        jobs.append((by_name[base], variants, base in runnable))
    return jobs, skipped


def benchmark_dataset(dataset: PreparedDataset, settings: Settings, progress: Progress) -> pd.DataFrame:
    """Run every selected method on every fold of every seed of one dataset.

    Returns:
        One row per run, plus one row per skipped or failed method.
    """
    name = dataset.spec.name
    jobs, skipped = plan_methods(dataset, settings.methods)
    runs_per_method = settings.folds * len(settings.seeds)
    progress.drop(runs_per_method * (trained_model_count(settings.methods) - sum(method.kind != "threshold" for method, _, _ in jobs)))
    records = [skipped_row(name, method, "skipped", reason) for method, reason in skipped.items()]
    for method, reason in skipped.items():
        print(f"{name}: {method} skipped: {reason}", flush=True)
    folds_by_seed = {seed: grouped_folds(dataset.groups, settings.folds, seed, settings.val_fraction) for seed in settings.seeds}
    print(
        f"{name}: {len(dataset.labeled)} labeled slices in {dataset.groups.nunique()} groups, "
        f"{len(dataset.unlabeled_rows)} unlabeled slices, {len(dataset.class_rows)} slices with "
        f"{dataset.spec.class_column} labels; {settings.folds} folds x {len(settings.seeds)} seeds",
        flush=True,
    )
    calibration, failed = calibrate_methods(jobs, dataset, fold_rows(dataset, folds_by_seed[settings.seeds[0]][0]), settings)
    progress.drop(runs_per_method * len(failed))

    for seed in settings.seeds:
        for fold in folds_by_seed[seed]:
            rows = fold_rows(dataset, fold)
            for method, variants, record_base in jobs:
                if method.name in failed:
                    continue
                try:
                    if method.kind == "threshold":
                        outcomes = {method.name: run_threshold(dataset, rows)}
                    elif method.kind == "minimal":
                        outcomes = {method.name: run_minimal(dataset, rows, seed, settings)}
                    else:
                        outcomes = run_pipeline(method, variants, dataset, rows, seed, settings, calibration[method.name])
                except Exception as error:  # recorded as a failed method with the error, the others go on
                    failed[method.name] = f"{type(error).__name__}: {error}"
                    traceback.print_exc()
                    done = sum(1 for row in records if row["method"] == method.name and row["status"] == "ok")
                    progress.drop(runs_per_method - done)
                    continue
                for method_name, outcome in outcomes.items():
                    if method_name != method.name or record_base:
                        records.append(run_row(name, method_name, seed, fold, rows, dataset, outcome, settings))
                first = next(iter(outcomes.values()))
                scores = ", ".join(f"{key} {value.dice_mean:.3f}" for key, value in outcomes.items())
                progress.report(
                    f"{name} seed {seed} fold {fold.fold}: Dice {scores} ({first.cpu_seconds:.0f} CPU s)",
                    trained=method.kind != "threshold",
                    wall_seconds=first.wall_seconds,
                )
    return pd.DataFrame(replace_failed_rows(records, failed, jobs, name))


def calibrate_methods(
    jobs: Sequence[tuple[MethodSpec, list[MethodSpec], bool]],
    dataset: PreparedDataset,
    rows: Mapping[str, np.ndarray],
    settings: Settings,
) -> tuple[dict[str, float], dict[str, str]]:
    """Probe the CPU cost per iteration of every pipeline method on one fold.

    Returns:
        Method name → CPU seconds per iteration, and method name → error
        for the methods whose probe failed.
    """
    calibration: dict[str, float] = {}
    failed: dict[str, str] = {}
    for method, _, _ in jobs:
        if method.kind != "pipeline":
            continue
        try:
            params = method_params(method, dataset.spec, dataset.segmentation_params)
            calibration[method.name] = calibrate(method, dataset, params, rows, settings)
        except Exception as error:  # one broken method must not stop the others; the table names the error
            failed[method.name] = f"{type(error).__name__}: {error}"
            traceback.print_exc()
            continue
        print(f"{dataset.spec.name}: {method.name} costs {calibration[method.name]:.2f} CPU s per iteration (probe)", flush=True)
    return calibration, failed


def replace_failed_rows(
    records: list[dict[str, Any]],
    failed: Mapping[str, str],
    jobs: Sequence[tuple[MethodSpec, list[MethodSpec], bool]],
    dataset_name: str,
) -> list[dict[str, Any]]:
    """Replace the rows of failed methods, and of their inference variants, by one row with the error each."""
    for method, reason in failed.items():
        print(f"{dataset_name}: {method} failed: {reason}", flush=True)
        variants = [spec.name for base, specs, _ in jobs if base.name == method for spec in specs]
        records = [row for row in records if row["method"] not in {method, *variants}]
        records.append(skipped_row(dataset_name, method, "failed", reason))
        for variant in variants:
            records.append(skipped_row(dataset_name, variant, "failed", f"its base method {method} failed: {reason}"))
    return records


def trained_model_count(selected: Sequence[str]) -> int:
    """Count the methods that train a model, with the base of each selected inference variant."""
    by_name = {method.name: method for method in METHODS}
    bases = {name for name in selected if by_name[name].kind != "threshold" and not by_name[name].reuse_model_of}
    bases |= {by_name[name].reuse_model_of for name in selected if by_name[name].reuse_model_of}
    return len(bases)


def run_row(
    dataset_name: str,
    method: str,
    seed: int,
    fold: Fold,
    rows: Mapping[str, np.ndarray],
    dataset: PreparedDataset,
    outcome: RunOutcome,
    settings: Settings,
) -> dict[str, Any]:
    """Build the per-run table row."""
    spec = {item.name: item for item in METHODS}[method]
    return {
        "dataset": dataset_name,
        "method": method,
        "status": "ok",
        "seed": seed,
        "fold": fold.fold,
        "train_slices": len(rows["train"]),
        "val_slices": len(rows["val"]),
        "test_slices": len(rows["test"]),
        "unlabeled_slices": len(dataset.unlabeled_rows) if spec.unlabeled else 0,
        "dice_mean": outcome.dice_mean,
        "dice_pooled": outcome.dice_pooled,
        "cpu_seconds": outcome.cpu_seconds,
        "wall_seconds": outcome.wall_seconds,
        "iterations": outcome.iterations,
        "stopped_by": outcome.stopped_by,
        "cpu_budget_s": settings.cpu_budget_s if spec.kind != "threshold" else float("nan"),
        "threshold": outcome.threshold,
        "note": "",
    }


def skipped_row(dataset_name: str, method: str, status: str, reason: str) -> dict[str, Any]:
    """Build the row of a method that did not run, with its reason."""
    return {"dataset": dataset_name, "method": method, "status": status, "note": reason}


# ---------------------------------------------------------------- command line


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    """Read the command line into ``Settings``; ``--quick`` changes the defaults, explicit options win."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 64 px, 2 folds, 2 seeds, 2 CPU s per run")
    parser.add_argument(
        "--datasets", nargs="+", choices=sorted(DATASETS), default=["phantom", "real"], help="datasets to compare (default: both)"
    )
    parser.add_argument(
        "--methods", nargs="+", choices=[method.name for method in METHODS], default=None, help="methods to compare (default: every method)"
    )
    parser.add_argument("--folds", type=int, default=None, help="cross-validation folds (default 3; quick 2)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1 2; quick 0 1)")
    parser.add_argument(
        "--cpu-budget-s", type=float, default=None, help="process CPU seconds per training run (default 40; quick 2)"
    )
    parser.add_argument("--image-size", type=int, default=None, help="slice side in px (default 128; quick 64)")
    parser.add_argument("--val-fraction", type=float, default=0.15, help="share of training groups used for validation")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("LUNGCT_DATA_DIR") or ROOT.parent / "shared" / "data"),
        help="folder laid out like the real public sample (default $LUNGCT_DATA_DIR, else ../shared/data)",
    )
    parser.add_argument("--scratch-dir", type=Path, default=None, help="scratch projects (default data/benchmarks/<full|quick>)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild slice stores and encoders even if reusable")
    parser.add_argument(
        "--docs-output",
        type=Path,
        default=None,
        help="Markdown file whose marked section receives the table (default docs/benchmarks.md; none in --quick)",
    )
    parser.add_argument(
        "--docs-marker",
        default="segmentation-methods",
        help="name of the marked section (<!-- NAME:start --> ... <!-- NAME:end -->) that receives the table",
    )
    parser.add_argument(
        "--project-path",
        type=Path,
        default=None,
        help="Kedro project whose catalog saves the outputs (default this project; none in --quick, so that "
        "a smoke test never mixes into the saved results)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: write the Markdown report and the page section again from the saved table",
    )
    parser.add_argument("--verbose", action="store_true", help="keep the training code's INFO log lines")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    defaults = QUICK_DEFAULTS if args.quick else FULL_DEFAULTS
    chosen = {
        option: getattr(args, option) if getattr(args, option) is not None else defaults[option]
        for option in ("folds", "seeds", "cpu_budget_s", "image_size", "docs_output")
    }
    # A quick smoke test saves nothing unless a project is named, so it never mixes into saved results.
    if args.project_path is not None:
        project_path = args.project_path.resolve()
    elif args.quick:
        project_path = None
    else:
        project_path = ROOT
    settings = Settings(
        datasets=args.datasets,
        methods=args.methods or [method.name for method in METHODS],
        val_fraction=args.val_fraction,
        data_dir=args.data_dir.resolve(),
        scratch_dir=(args.scratch_dir or defaults["scratch_dir"]).resolve(),
        probe_iterations=defaults["probe_iterations"],
        threads=torch.get_num_threads(),
        quick=args.quick,
        rebuild=args.rebuild,
        phantom=defaults["phantom"],
        pretraining=defaults["pretraining"],
        project_path=project_path,
        docs_marker=args.docs_marker,
        report_only=args.report_only,
        verbose=args.verbose,
        **chosen,
    )
    if settings.folds < 2:
        parser.error(f"--folds must be at least 2, got {settings.folds}")
    if settings.cpu_budget_s <= 0:
        parser.error(f"--cpu-budget-s must be positive, got {settings.cpu_budget_s:g}")
    if settings.image_size < 32:
        parser.error(f"--image-size must be at least 32 px, got {settings.image_size}")
    if settings.phantom["n_patients"] < settings.folds and "phantom" in settings.datasets:
        parser.error(f"--folds {settings.folds} needs at least {settings.folds} phantom patients")
    return settings


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    """Run the comparison and write its outputs; return the summary table."""
    settings = parse_settings(argv)
    if not settings.verbose:
        # One progress line per run replaces the training code's per-iteration logs.
        logging.getLogger("lungct_kedro.training").setLevel(logging.WARNING)
        logging.getLogger("lungct_kedro.pipelines.segmentation").setLevel(logging.WARNING)

    if settings.docs_output is not None:
        # Fail now on a document without markers, not after an hour of training.
        replace_docs_section(
            settings.docs_output.read_text(encoding="utf-8"), "", settings.docs_output, settings.docs_marker
        )

    total = len(settings.datasets) * trained_model_count(settings.methods) * settings.folds * len(settings.seeds)
    print(
        f"Segmentation methods: {', '.join(settings.methods)} on {', '.join(settings.datasets)}; "
        f"{settings.folds} folds x {len(settings.seeds)} seeds, {settings.cpu_budget_s:g} CPU s per run, "
        f"{settings.threads} threads: at most {total} training runs, about "
        f"{clock(total * expected_run_seconds(settings))} of training plus data preparation",
        flush=True,
    )

    prepared: dict[str, PreparedDataset] = {}
    frames = []
    progress = Progress(total, expected_run_seconds(settings))
    for name in settings.datasets:
        prepared[name] = prepare_dataset(DATASETS[name], settings)
        if not settings.report_only:
            frames.append(benchmark_dataset(prepared[name], settings, progress))
    runs = pd.concat(frames, ignore_index=True) if frames else None

    if settings.report_only:
        if settings.project_path is None:
            raise SystemExit("--report-only reads the saved table; pass --project-path with --quick")
        saved = load_saved_table(settings.project_path)
    elif settings.project_path is None:
        saved = summary_table(runs)
        print("Outputs not saved (--quick); pass --project-path to save them through a project's catalog", flush=True)
    else:
        saved = save_outputs(runs, summary_table(runs), settings.project_path)
    # The report covers this command's datasets, with every method's latest result on them.
    table = saved[saved["dataset"].isin(settings.datasets)].reset_index(drop=True)
    markdown = markdown_report(table, prepared, settings)
    if settings.project_path is not None:
        save_markdown(markdown, settings.project_path)
    print("\n" + markdown, flush=True)
    if settings.docs_output is not None:
        docs = settings.docs_output
        text = replace_docs_section(docs.read_text(encoding="utf-8"), markdown, docs, settings.docs_marker)
        with atomic_file(docs) as staging:
            staging.write_text(text, encoding="utf-8")
        print(f"Wrote the table into {docs}", flush=True)
    else:
        print("docs/benchmarks.md left unchanged (--quick); pass --docs-output to write a marked section", flush=True)
    return table


if __name__ == "__main__":
    main()
