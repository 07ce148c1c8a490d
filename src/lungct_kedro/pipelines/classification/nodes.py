"""Nodes of the classification pipeline: labels, budgets, repeated training, summary."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lungct_kedro.datasets.slice_store import SliceStore
from lungct_kedro.pipelines.classification.figures import plot_budget_comparison, plot_confusion_matrices
from lungct_kedro.training.classification import (
    ClassifierRun,
    Preprocessing,
    build_preprocessing,
    budget_name,
    draw_label_budget,
    predict_classes,
    train_classifier,
    unlabeled_pool,
)
from lungct_kedro.training.classification_metrics import classification_scores, confusion_matrix, mean_and_std

logger = logging.getLogger(__name__)

METHODS = ("majority", "supervised", "mean_teacher")
SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


def _classes(params: Mapping[str, Any]) -> list[str]:
    classes = [str(name) for name in params["classes"]]
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ValueError(f"classification.classes needs at least 2 distinct names, got {classes}")
    return classes


def _budgets(params: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    budget = params["budget"]
    return list(budget) if isinstance(budget, list) else [budget]


def select_classification_slices(split_manifest: pd.DataFrame, params: Mapping[str, Any]) -> pd.DataFrame:
    """Attach a class label (or null) to every slice of the chosen sources.

    A slice is labeled when its ``label_column`` value is one of
    ``classes``; null values and values outside ``classes`` leave it
    unlabeled. Values outside ``classes`` are logged once with their counts.

    Args:
        split_manifest: The manifest with its ``split`` column.
        params: The ``classification`` parameters: ``label_column``,
            ``classes``, ``sources`` (names, or null for all) and
            ``evaluation.split``.

    Returns:
        Columns ``slice_id``, ``store_index``, ``split``, ``source``,
        ``patient_id`` and ``label`` (class name or null).

    Raises:
        ValueError: The label column or a source is unknown, the classes are
            invalid, or the evaluation split has no labeled slice.
    """
    column = params["label_column"]
    classes = _classes(params)
    if column not in split_manifest.columns:
        raise ValueError(
            f"classification.label_column '{column}' is not a manifest column; "
            f"the manifest has {sorted(split_manifest.columns)}"
        )
    chosen = split_manifest
    sources = params.get("sources")
    if sources:
        unknown = set(sources) - set(split_manifest["source"].unique())
        if unknown:
            raise ValueError(f"classification.sources names unknown sources {sorted(unknown)}")
        chosen = chosen[chosen["source"].isin(sources)]

    values = chosen[column].astype("object").where(chosen[column].notna(), None)
    values = values.map(lambda value: None if value is None else str(value))
    outside = values[values.notna() & ~values.isin(classes)]
    if len(outside):
        logger.warning(
            "%d slices have a %s value outside classification.classes %s and are treated as unlabeled: %s",
            len(outside),
            column,
            classes,
            outside.value_counts().to_dict(),
        )
    slices = chosen[["slice_id", "store_index", "split", "source", "patient_id"]].copy()
    slices["split"] = slices["split"].astype(str)
    slices["label"] = values.where(values.isin(classes), None)
    slices = slices.reset_index(drop=True)

    counts = slices.dropna(subset=["label"]).groupby(["split", "label"]).size()
    logger.info("Labeled %s slices per split and class: %s", column, counts.to_dict())
    evaluation_split = params["evaluation"]["split"]
    if not ((slices["split"] == evaluation_split) & slices["label"].notna()).any():
        raise ValueError(
            f"the {evaluation_split} split has no slice labeled with {column} in {classes}, so nothing can be "
            "evaluated; set classification.evaluation.split to a split that has labels, or change the splits"
        )
    return slices


def draw_label_budgets(classification_slices: pd.DataFrame, params: Mapping[str, Any]) -> pd.DataFrame:
    """Draw ``n_draws`` labeled budgets from the train split, and their unlabeled pools.

    Draw ``d`` of every budget uses the seed ``budget_seed + d``, so a draw
    is reproducible and the draws of one budget differ.

    Returns:
        One row per (budget, draw, train slice): ``budget``, ``draw``,
        ``draw_seed``, ``role`` (``labeled`` or ``pool``), ``slice_id``,
        ``store_index``, ``label``. Val and test slices never appear.
    """
    classes = _classes(params)
    tables = []
    for budget in _budgets(params):
        for draw in range(int(params["n_draws"])):
            seed = int(params["budget_seed"]) + draw
            labeled = draw_label_budget(classification_slices, classes, budget, seed).assign(role="labeled")
            pool = unlabeled_pool(classification_slices, labeled).assign(role="pool")
            table = pd.concat([labeled, pool])[["role", "slice_id", "store_index", "label"]]
            tables.append(table.assign(budget=budget_name(budget), draw=draw, draw_seed=seed))
            logger.info(
                "Budget %s draw %d: %d labeled %s, %d pool slices",
                budget_name(budget),
                draw,
                len(labeled),
                labeled["label"].value_counts().to_dict(),
                len(pool),
            )
    columns = ["budget", "draw", "draw_seed", "role", "slice_id", "store_index", "label"]
    return pd.concat(tables, ignore_index=True)[columns]


def _use_validation(slices: pd.DataFrame, params: Mapping[str, Any]) -> tuple[bool, str]:
    if params["evaluation"]["split"] == "val":
        return False, "evaluation is on the val split, so no checkpoint is selected on it; the final state is kept"
    if params["training"].get("checkpoint_selection", "best_val") == "last":
        return False, "checkpoint_selection is 'last'; the final state is kept"
    val_classes = slices.loc[(slices["split"] == "val") & slices["label"].notna(), "label"].unique()
    if len(val_classes) < 2:
        return False, (
            f"the val split has labeled slices of {len(val_classes)} class(es) {sorted(val_classes)}, so selecting on "
            "it would favour predicting that class; the final state is kept"
        )
    return True, "state with the best validation score"


def _checkpoint(
    run: ClassifierRun, method: str, params: Mapping[str, Any], record: Mapping[str, Any], prep: Preprocessing
) -> dict[str, Any]:
    plain = json.loads(json.dumps({"model": dict(params["model"]), "record": dict(record)}, default=str))
    return {
        "state_dict": {key: value.detach().cpu() for key, value in run.model.state_dict().items()},
        "method": method,
        "model": plain["model"],
        "classes": _classes(params),
        "label_column": params["label_column"],
        "input_size": prep.input_size,
        "in_channels": prep.in_channels,
        "normalisation_mean": list(prep.mean),
        "normalisation_std": list(prep.std),
        "run": plain["record"],
    }


def evaluation_rows(
    slices: pd.DataFrame, params: Mapping[str, Any], index_of: Mapping[str, int], description: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
    """Return store rows and labels of the evaluation split and of validation.

    When metrics come from the val split, validation is left empty so that
    training never looks at it. Logs how checkpoints are selected.

    Returns:
        Evaluation rows and labels, validation rows and labels, and whether
        checkpoints are selected on validation.
    """
    evaluation_split = params["evaluation"]["split"]
    eval_rows, eval_labels = _labeled_rows(slices, evaluation_split, index_of)
    select_on_val, selection_note = _use_validation(slices, params)
    logger.log(logging.INFO if select_on_val else logging.WARNING, "%s: %s", description, selection_note)
    if evaluation_split == "val":
        empty = np.zeros(0, dtype=np.int64)
        return eval_rows, eval_labels, empty, empty, select_on_val
    val_rows, val_labels = _labeled_rows(slices, "val", index_of)
    return eval_rows, eval_labels, val_rows, val_labels, select_on_val


def _labeled_rows(slices: pd.DataFrame, split: str, index_of: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
    chosen = slices[(slices["split"] == split) & slices["label"].notna()]
    return chosen["store_index"].to_numpy(dtype=np.int64), chosen["label"].map(index_of).to_numpy(dtype=np.int64)


def run_few_shot_experiments(
    slice_store: SliceStore,
    classification_slices: pd.DataFrame,
    classification_draws: pd.DataFrame,
    params: Mapping[str, Any],
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """Train and test every method on every budget draw and training seed.

    Methods: ``majority`` (predicts the most frequent class of the labeled
    budget, ties to the first class), ``supervised`` and ``mean_teacher``.
    The checkpoint kept for each trained method is its run with the best
    validation score when the validation split selects checkpoints, else
    its first run.

    Returns:
        The per-run table (metrics on the evaluation split and the confusion
        matrix as JSON), the training history of every run, and the
        supervised and Mean Teacher checkpoints.
    """
    slice_store.check_rows(classification_slices["slice_id"], classification_slices["store_index"])
    classes = _classes(params)
    index_of = {name: i for i, name in enumerate(classes)}
    evaluation_split = params["evaluation"]["split"]
    eval_rows, eval_labels, val_rows, val_labels, select_on_val = evaluation_rows(
        classification_slices, params, index_of, "Checkpoint selection"
    )
    prep = build_preprocessing(params, slice_store.image_size)

    records, histories = [], []
    kept: dict[str, tuple[float, dict[str, Any]]] = {}
    for (budget, draw), draw_table in classification_draws.groupby(["budget", "draw"], sort=False):
        labeled = draw_table[draw_table["role"] == "labeled"]
        labeled_rows = labeled["store_index"].to_numpy(dtype=np.int64)
        labels = labeled["label"].map(index_of).to_numpy(dtype=np.int64)
        pool_rows = draw_table.loc[draw_table["role"] == "pool", "store_index"].to_numpy(dtype=np.int64)
        base = {
            "budget": budget,
            "n_labeled": len(labeled_rows),
            "n_pool": len(pool_rows),
            "draw": int(draw),
            "draw_seed": int(draw_table["draw_seed"].iloc[0]),
        }
        for seed in params["seeds"]:
            for method in METHODS:
                started = time.perf_counter()
                record = {**base, "seed": int(seed), "method": method}
                run = None
                if method == "majority":
                    majority = int(np.bincount(labels, minlength=len(classes)).argmax())
                    predictions = np.full(len(eval_rows), majority, dtype=np.int64)
                    record.update(selection="none", selected_iteration=0, val_score=None)
                else:
                    run = train_classifier(
                        slice_store, labeled_rows, labels, pool_rows, val_rows, val_labels,
                        method, params, int(seed), select_on_val,
                    )
                    device = next(run.model.parameters()).device
                    batch_size = int(params["evaluation"]["batch_size"])
                    predictions = predict_classes(run.model, slice_store, eval_rows, prep, device, batch_size)
                    record.update(
                        selection=run.selection, selected_iteration=run.selected_iteration, val_score=run.val_score
                    )
                    run_keys = {key: record[key] for key in ("budget", "draw", "seed", "method")}
                    histories.append(pd.DataFrame(run.result.history).assign(**run_keys))

                confusion = confusion_matrix(eval_labels, predictions, len(classes))
                scores = classification_scores(confusion, classes)
                record.update({metric: scores[metric] for metric in SUMMARY_METRICS})
                record.update({f"recall_{name}": value for name, value in scores["recall"].items()})
                record["train_seconds"] = round(time.perf_counter() - started, 2)
                record["confusion_matrix"] = json.dumps(confusion.tolist())
                records.append(record)
                logger.info(
                    "%s %s draw %d seed %d: %s accuracy %.3f, balanced accuracy %.3f, macro-F1 %.3f",
                    budget, method, draw, seed, evaluation_split,
                    scores["accuracy"], scores["balanced_accuracy"], scores["macro_f1"],
                )

                if run is not None:
                    rank = run.val_score if (select_on_val and run.val_score is not None) else float("-inf")
                    if method not in kept or rank > kept[method][0]:
                        chosen_by = "best validation score over runs" if select_on_val else "first run"
                        checkpoint = _checkpoint(run, method, params, {**record, "chosen_by": chosen_by}, prep)
                        kept[method] = (rank, checkpoint)

    runs = pd.DataFrame(records)
    history = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame()
    return runs, history, kept["supervised"][1], kept["mean_teacher"][1]


def summarise_few_shot_results(
    classification_runs: pd.DataFrame, params: Mapping[str, Any]
) -> tuple[dict[str, Any], str, Figure, Figure]:
    """Summarise the runs as mean ± std per budget and method.

    The standard deviation is the sample one (ddof = 1) over the runs
    (draws × seeds); one run gives 0. Confusion matrices are summed over all
    runs of a method at a budget.

    Returns:
        The summary (``classification_metrics.json``), a Markdown results
        table, the confusion-matrix figure (first budget) and the figure of
        accuracy against budget (several budgets) or per method (one).
    """
    classes = _classes(params)
    recall_columns = [f"recall_{name}" for name in classes if f"recall_{name}" in classification_runs]
    budgets = list(dict.fromkeys(classification_runs["budget"]))
    results: dict[str, Any] = {}
    for budget in budgets:
        results[budget] = {}
        for method in METHODS:
            chosen = (classification_runs["budget"] == budget) & (classification_runs["method"] == method)
            runs = classification_runs[chosen]
            entry: dict[str, Any] = {"n_runs": len(runs), "n_labeled": int(runs["n_labeled"].iloc[0])}
            for metric in SUMMARY_METRICS:
                mean, std = mean_and_std(runs[metric])
                entry[metric] = {"mean": mean, "std": std}
            entry["recall"] = {}
            for column in recall_columns:
                mean, std = mean_and_std(runs[column])
                entry["recall"][column.removeprefix("recall_")] = {"mean": mean, "std": std}
            summed = np.sum([json.loads(text) for text in runs["confusion_matrix"]], axis=0)
            entry["confusion_matrix_summed"] = summed.tolist()
            results[budget][method] = entry

    first = classification_runs.iloc[0]
    summary = {
        "label_column": params["label_column"],
        "classes": classes,
        "evaluation_split": params["evaluation"]["split"],
        "n_evaluation_slices": int(np.sum(json.loads(first["confusion_matrix"]))),
        "classes_absent_from_evaluation": [name for name in classes if f"recall_{name}" not in recall_columns],
        "architecture": params["model"].get("architecture", "resnet18"),
        "iterations": int(params["training"]["iterations"]),
        "n_draws": int(params["n_draws"]),
        "seeds": [int(seed) for seed in params["seeds"]],
        "checkpoint_selection": sorted(set(classification_runs["selection"]) - {"none"}),
        "std": "sample standard deviation (ddof=1) over draws x seeds; 0 for a single run",
        "confusion_matrix": "summed over all runs of the method at the budget; rows reference, columns predicted",
        "results": results,
    }
    table = _markdown_table(results, classes, recall_columns, summary)
    confusion = plot_confusion_matrices(
        {method: np.asarray(results[budgets[0]][method]["confusion_matrix_summed"]) for method in METHODS},
        classes,
        f"{summary['evaluation_split']} split, budget {budgets[0]}, "
        f"summed over {results[budgets[0]]['majority']['n_runs']} runs",
    )
    comparison = plot_budget_comparison(results, METHODS, summary["evaluation_split"])
    return summary, table, confusion, comparison


def _markdown_table(results: Mapping[str, Any], classes, recall_columns, summary: Mapping[str, Any]) -> str:
    recall_names = [column.removeprefix("recall_") for column in recall_columns]
    header = ["budget", "method", "runs", "accuracy", "balanced accuracy", "macro-F1"] + [
        f"recall {name}" for name in recall_names
    ]
    lines = [
        f"Few-shot classification of `{summary['label_column']}` ({', '.join(classes)}) on the "
        f"{summary['evaluation_split']} split ({summary['n_evaluation_slices']} slices); mean ± sample std over runs.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|",
    ]
    for budget, methods in results.items():
        for method, entry in methods.items():
            cells = [budget, method, str(entry["n_runs"])]
            cells += [f"{entry[m]['mean']:.3f} ± {entry[m]['std']:.3f}" for m in SUMMARY_METRICS]
            cells += [f"{entry['recall'][n]['mean']:.3f} ± {entry['recall'][n]['std']:.3f}" for n in recall_names]
            lines.append("| " + " | ".join(cells) + " |")
    if summary["classes_absent_from_evaluation"]:
        absent = ", ".join(summary["classes_absent_from_evaluation"])
        lines += ["", f"Classes without evaluation slices (no recall): {absent}."]
    return "\n".join(lines) + "\n"
