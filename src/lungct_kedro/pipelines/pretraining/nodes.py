"""Nodes of the pretraining pipeline: pre-training slices, self-supervised training, transfer table."""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lungct_kedro.datasets.slice_store import SliceStore
from lungct_kedro.pipelines.classification.nodes import (
    draw_label_budgets,
    evaluation_rows,
    select_classification_slices,
)
from lungct_kedro.pipelines.pretraining.figures import plot_pretraining_curves, plot_transfer_comparison
from lungct_kedro.training.classification import build_preprocessing, predict_classes, train_classifier
from lungct_kedro.training.classification_metrics import classification_scores, confusion_matrix, mean_and_std
from lungct_kedro.training.pretraining import pretrain_encoder

logger = logging.getLogger(__name__)

INITS = ("scratch", "pretrained")
MODES = ("linear_probe", "fine_tune")
TABLE_METRICS = ("accuracy", "balanced_accuracy")


def select_pretraining_slices(split_manifest: pd.DataFrame, params: Mapping[str, Any]) -> pd.DataFrame:
    """Pick the train-split slices of ``pretraining.sources`` (null: every source); labels are ignored.

    Val and test slices are never returned, so no evaluation slice is seen
    during pre-training.

    Returns:
        Columns ``slice_id``, ``store_index``, ``source``, ``patient_id`` and ``has_mask``.

    Raises:
        ValueError: A source is unknown or no train slice is left.
    """
    chosen = split_manifest[split_manifest["split"].astype(str) == "train"]
    sources = params.get("sources")
    if sources:
        unknown = set(sources) - set(split_manifest["source"].unique())
        if unknown:
            raise ValueError(
                f"pretraining.sources names unknown sources {sorted(unknown)}; "
                f"the manifest has {sorted(split_manifest['source'].unique())}"
            )
        chosen = chosen[chosen["source"].isin(sources)]
    if chosen.empty:
        raise ValueError(f"no train slice of sources {sources} to pre-train on; check pretraining.sources")
    columns = ["slice_id", "store_index", "source", "patient_id", "has_mask"]
    slices = chosen[columns].reset_index(drop=True)
    logger.info("Pre-training on %d train slices: %s", len(slices), slices["source"].value_counts().to_dict())
    return slices


def pretrain_ssl_encoder(
    slice_store: SliceStore, pretraining_slices: pd.DataFrame, params: Mapping[str, Any]
) -> tuple[dict[str, Any], pd.DataFrame, Figure]:
    """Pre-train the shared ResNet-18 encoder and package its weights.

    Returns:
        The checkpoint (``state_dict`` of the encoder, the method, the
        settings and the final embedding std), the training history and
        the figure of loss and embedding std.
    """
    slice_store.check_rows(pretraining_slices["slice_id"], pretraining_slices["store_index"])
    started = time.perf_counter()
    run = pretrain_encoder(slice_store, pretraining_slices["store_index"].to_numpy(dtype=np.int64), params)
    history = pd.DataFrame(run.result.history)
    final_std = float(history["embedding_std"].dropna().iloc[-1])
    settings = json.loads(json.dumps({key: value for key, value in params.items() if key != "transfer"}, default=str))
    checkpoint = {
        "state_dict": {key: value.detach().cpu() for key, value in run.model.encoder.state_dict().items()},
        "architecture": "resnet18",
        "method": run.model.method,
        "in_channels": int(params.get("in_channels", 1)),
        "input_size": int(params["input_size"]),
        "n_slices": len(pretraining_slices),
        "sources": sorted(pretraining_slices["source"].unique()),
        "final_embedding_std": final_std,
        "collapse_warnings_at": run.collapse_warnings,
        "train_seconds": round(time.perf_counter() - started, 1),
        "settings": settings,
    }
    logger.info(
        "Pre-trained %s encoder in %.0f s; final embedding std %.4f", run.model.method, checkpoint["train_seconds"],
        final_std,
    )
    figure = plot_pretraining_curves(history, int(params["projector"]["out_dim"]), float(params["collapse"]["min_std_ratio"]))
    return checkpoint, history, figure


def _deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(dict(base))
    for key, value in (overrides or {}).items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _mode_params(classification: Mapping[str, Any], transfer: Mapping[str, Any], mode: str) -> dict[str, Any]:
    params = _deep_merge(classification, transfer.get("classification_overrides") or {})
    learning_rate = (transfer.get("learning_rate") or {}).get(mode)
    if learning_rate is not None:
        params["training"]["learning_rate"] = float(learning_rate)
    return params


def compare_transfer(
    slice_store: SliceStore,
    split_manifest: pd.DataFrame,
    pretrained_encoder: Mapping[str, Any],
    classification_params: Mapping[str, Any],
    params: Mapping[str, Any],
) -> tuple[pd.DataFrame, pd.DataFrame, str, dict[str, Any], Figure]:
    """Run the few-shot classification protocol from scratch and from the pre-trained encoder.

    The label budgets, draws (``budget_seed + d``), training seeds,
    evaluation split and checkpoint selection are those of the
    ``classification`` pipeline, computed by its own functions, so each
    pre-trained run has a scratch partner with the same labeled slices and
    seed. Each initialisation trains in two modes: ``linear_probe`` (frozen
    encoder, head only) and ``fine_tune`` (every weight).

    Args:
        slice_store: The slice store.
        split_manifest: The manifest with its split.
        pretrained_encoder: The checkpoint saved by ``pretrain_ssl_encoder``.
        classification_params: The ``classification`` parameters.
        params: The ``pretraining`` parameters; ``transfer`` sets ``modes``,
            ``method`` (the classification method trained), per-mode
            ``learning_rate`` (null: the classification one) and
            ``classification_overrides`` merged into the classification
            parameters for these runs only.

    Returns:
        One row per run, the summary table (one row per budget, init and
        mode), the same table as Markdown, a JSON summary and a bar chart.

    Raises:
        ValueError: Unknown mode, or input channels that differ between
            pre-training and classification.
    """
    transfer = params["transfer"]
    modes = list(transfer.get("modes", MODES))
    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"pretraining.transfer.modes has unknown modes {sorted(unknown)}; use {list(MODES)}")
    method = transfer.get("method", "supervised")
    base = _deep_merge(classification_params, transfer.get("classification_overrides") or {})
    in_channels = int(base["model"].get("in_channels", 1))
    if base["model"].get("architecture", "resnet18") != "resnet18" or in_channels != pretrained_encoder["in_channels"]:
        raise ValueError(
            "transfer needs the classification model to be resnet18 with the pre-trained in_channels "
            f"({pretrained_encoder['in_channels']}), got {base['model'].get('architecture')} with {in_channels}"
        )

    slices = select_classification_slices(split_manifest, base)
    draws = draw_label_budgets(slices, base)
    classes = [str(name) for name in base["classes"]]
    index_of = {name: i for i, name in enumerate(classes)}
    evaluation_split = base["evaluation"]["split"]
    eval_rows, eval_labels, val_rows, val_labels, select_on_val = evaluation_rows(
        slices, base, index_of, "Transfer checkpoint selection"
    )
    prep = build_preprocessing(base, slice_store.image_size)
    encoder_state = pretrained_encoder["state_dict"]

    records = []
    for (budget, draw), draw_table in draws.groupby(["budget", "draw"], sort=False):
        labeled = draw_table[draw_table["role"] == "labeled"]
        labeled_rows = labeled["store_index"].to_numpy(dtype=np.int64)
        labels = labeled["label"].map(index_of).to_numpy(dtype=np.int64)
        pool_rows = draw_table.loc[draw_table["role"] == "pool", "store_index"].to_numpy(dtype=np.int64)
        for seed in base["seeds"]:
            for mode in modes:
                run_params = _mode_params(classification_params, transfer, mode)
                for init in INITS:
                    started = time.perf_counter()
                    run = train_classifier(
                        slice_store, labeled_rows, labels, pool_rows, val_rows, val_labels, method, run_params,
                        int(seed), select_on_val,
                        init_encoder_state=encoder_state if init == "pretrained" else None,
                        freeze_encoder=mode == "linear_probe",
                    )
                    device = next(run.model.parameters()).device
                    predictions = predict_classes(run.model, slice_store, eval_rows, prep, device)
                    scores = classification_scores(confusion_matrix(eval_labels, predictions, len(classes)), classes)
                    records.append({
                        "budget": budget, "n_labeled": len(labeled_rows), "draw": int(draw),
                        "draw_seed": int(draw_table["draw_seed"].iloc[0]), "seed": int(seed), "init": init,
                        "mode": mode, "method": method, "selection": run.selection,
                        "accuracy": scores["accuracy"], "balanced_accuracy": scores["balanced_accuracy"],
                        "train_seconds": round(time.perf_counter() - started, 2),
                    })
                    logger.info(
                        "Transfer %s draw %d seed %d %s %s: %s accuracy %.3f, balanced accuracy %.3f",
                        budget, draw, seed, init, mode, evaluation_split, scores["accuracy"],
                        scores["balanced_accuracy"],
                    )
    runs = pd.DataFrame(records)
    table = summarise_transfer(runs)
    summary = {
        "pretraining_method": pretrained_encoder["method"],
        "pretraining_slices": pretrained_encoder["n_slices"],
        "pretraining_sources": pretrained_encoder["sources"],
        "classification_method": method,
        "label_column": base["label_column"],
        "classes": classes,
        "evaluation_split": evaluation_split,
        "n_evaluation_slices": len(eval_rows),
        "iterations": int(base["training"]["iterations"]),
        "learning_rate": {mode: float(_mode_params(classification_params, transfer, mode)["training"]["learning_rate"])
                          for mode in modes},
        "draw_seeds": sorted(set(int(seed) for seed in runs["draw_seed"])),
        "training_seeds": [int(seed) for seed in base["seeds"]],
        "checkpoint_selection": sorted(set(runs["selection"])),
        "std": "sample standard deviation (ddof=1) over draws x seeds; 0 for a single run",
        "change": "pre-trained minus scratch for the same budget and mode; relative change in % of the scratch mean",
        "table": json.loads(table.to_json(orient="records")),
    }
    markdown = transfer_markdown(table, summary)
    figure = plot_transfer_comparison(table, evaluation_split)
    return runs, table, markdown, summary, figure


def summarise_transfer(runs: pd.DataFrame) -> pd.DataFrame:
    """Summarise transfer runs per budget, init and mode, with the change against scratch.

    ``*_change_abs`` is the pre-trained mean minus the scratch mean of the
    same budget and mode; ``*_change_rel_pct`` divides it by the scratch
    mean (NaN when that mean is 0). Scratch rows have a change of 0.
    """
    rows = []
    for (budget, mode, init), group in runs.groupby(["budget", "mode", "init"], sort=False):
        row: dict[str, Any] = {
            "setting": f"{init} / {mode}",
            "init": init,
            "mode": mode,
            "label_budget": budget,
            "n_labeled": int(group["n_labeled"].iloc[0]),
            "n_runs": len(group),
        }
        for metric in TABLE_METRICS:
            row[f"{metric}_mean"], row[f"{metric}_std"] = mean_and_std(group[metric])
        row["draw_seeds"] = " ".join(str(seed) for seed in sorted(set(group["draw_seed"])))
        row["training_seeds"] = " ".join(str(seed) for seed in sorted(set(group["seed"])))
        rows.append(row)
    table = pd.DataFrame(rows)
    for metric in TABLE_METRICS:
        scratch = table[table["init"] == "scratch"].set_index(["label_budget", "mode"])[f"{metric}_mean"]
        reference = [scratch.get((budget, mode), math.nan) for budget, mode in zip(table["label_budget"], table["mode"])]
        reference = np.asarray(reference, dtype=np.float64)
        change = table[f"{metric}_mean"].to_numpy() - reference
        table[f"{metric}_change_abs"] = change
        with np.errstate(divide="ignore", invalid="ignore"):
            table[f"{metric}_change_rel_pct"] = np.where(reference > 0, 100.0 * change / reference, math.nan)
    budget_order = {budget: i for i, budget in enumerate(dict.fromkeys(table["label_budget"]))}
    rank = (
        table["label_budget"].map(budget_order) * 100
        + table["mode"].map({mode: i for i, mode in enumerate(MODES)}) * 10
        + table["init"].map({init: i for i, init in enumerate(INITS)})
    )
    table = table.iloc[np.argsort(rank.to_numpy(), kind="stable")]
    return table.reset_index(drop=True)


def _signed(value: float, digits: int, suffix: str = "") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:+.{digits}f}{suffix}"


def transfer_markdown(table: pd.DataFrame, summary: Mapping[str, Any]) -> str:
    """Format the transfer table as Markdown with its settings above it."""
    lines = [
        f"Transfer of the {summary['pretraining_method']} encoder (pre-trained on {summary['pretraining_slices']} "
        f"train slices of {', '.join(summary['pretraining_sources'])}) to few-shot classification of "
        f"`{summary['label_column']}` ({', '.join(summary['classes'])}), {summary['classification_method']} "
        f"training, {summary['iterations']} iterations. Metrics on the {summary['evaluation_split']} split "
        f"({summary['n_evaluation_slices']} slices), mean ± sample std over runs. Draw seeds "
        f"{summary['draw_seeds']}, training seeds {summary['training_seeds']}. Changes are pre-trained minus "
        "scratch for the same budget and mode.",
        "",
        "| setting | init | mode | label budget | runs | accuracy | balanced accuracy | Δ accuracy | Δ accuracy (%) "
        "| Δ balanced accuracy | Δ balanced accuracy (%) |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in table.to_dict(orient="records"):
        cells = [
            row["setting"], row["init"], row["mode"], f"{row['label_budget']} ({row['n_labeled']} slices)",
            str(row["n_runs"]),
            f"{row['accuracy_mean']:.3f} ± {row['accuracy_std']:.3f}",
            f"{row['balanced_accuracy_mean']:.3f} ± {row['balanced_accuracy_std']:.3f}",
            _signed(row["accuracy_change_abs"], 3), _signed(row["accuracy_change_rel_pct"], 1, " %"),
            _signed(row["balanced_accuracy_change_abs"], 3), _signed(row["balanced_accuracy_change_rel_pct"], 1, " %"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
