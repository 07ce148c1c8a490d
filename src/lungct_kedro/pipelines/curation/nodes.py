"""Nodes of the curation pipeline: quality metrics, low-quality selection and enhanced references."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lungct_kedro.datasets.slice_store import SliceStore
from lungct_kedro.imaging.enhance import enhance_image
from lungct_kedro.imaging.quality import DEFAULT_CHUNK_SIZE, METRIC_NAMES, compute_quality_table
from lungct_kedro.pipelines.curation.figures import plot_examples, plot_metric_histograms
from lungct_kedro.pipelines.curation.rules import (
    Rule,
    failed_rule_matrix,
    failed_rule_names,
    resolve_rules,
    rules_from_summary,
    severity_scores,
)

logger = logging.getLogger(__name__)

#: Identifying columns of the quality table, before the metrics.
ID_COLUMNS = ["slice_id", "store_index", "variant", "source", "split", "patient_id"]
#: Columns of the dehazing subset that the dehazing pipeline relies on.
SUBSET_COLUMNS = [*ID_COLUMNS, "failed_rules", "n_failed_rules", "pair_index"]
#: Enhancement chain used when ``curation.enhancement.steps`` is not set.
DEFAULT_ENHANCEMENT_STEPS = [
    {"name": "nl_means", "strength": 1.2},
    {"name": "clahe", "clip_limit": 0.005},
    {"name": "exposure"},
]


def _window_to_hu(images: np.ndarray, attributes: Mapping[str, Any]) -> np.ndarray | None:
    """Map windowed intensities back to HU, or None when the store has no window."""
    if "window_level_hu" not in attributes or "window_width_hu" not in attributes:
        return None
    width = float(attributes["window_width_hu"])
    low = float(attributes["window_level_hu"]) - width / 2.0
    return low + np.asarray(images, dtype=np.float32) * width


def _quality_of_rows(
    slice_store: SliceStore, array_name: str, rows: np.ndarray, has_hu: np.ndarray, chunk_size: int
) -> pd.DataFrame:
    """Compute the quality table of ``slice_store.arrays[array_name][rows]``, one chunk at a time.

    The clean image uses the stored HU for the CNR. The poor-quality twin has
    no HU array of its own, so its CNR uses HU recovered from its windowed
    intensities. Those are accurate to the float16 step (under 1 HU for a
    1500 HU window) between the window limits, which are -1350 and 150 HU for
    the default lung window and so contain both CNR ranges.
    """
    images = slice_store.arrays[array_name]
    tables = []
    for start in range(0, len(rows), chunk_size):
        chunk_rows = rows[start : start + chunk_size]
        chunk = np.asarray(images[chunk_rows], dtype=np.float32)
        if array_name == "image" and slice_store.has("hu"):
            hu = np.asarray(slice_store.arrays["hu"][chunk_rows])
        else:
            hu = _window_to_hu(chunk, slice_store.attributes)
        chunk_has_hu = has_hu[start : start + chunk_size] if hu is not None else None
        tables.append(compute_quality_table(chunk, hu=hu, has_hu=chunk_has_hu, chunk_size=chunk_size))
    if not tables:
        return pd.DataFrame({name: pd.Series(dtype=np.float64) for name in METRIC_NAMES})
    return pd.concat(tables, ignore_index=True)


def compute_quality_metrics(
    slice_store: SliceStore, split_manifest: pd.DataFrame, params: Mapping[str, Any]
) -> pd.DataFrame:
    """Compute the quality metrics of every candidate slice.

    The candidates are every manifest row's ``image`` (variant ``clean``) and,
    where ``has_lowq`` is true, its ``image_lowq`` twin (variant ``lowq``).

    Args:
        slice_store: The harmonised slice store.
        split_manifest: The manifest with its ``split`` column.
        params: The ``curation`` parameters; ``chunk_size`` (slices read at
            once, default 256) bounds memory.

    Returns:
        One row per candidate, clean rows first in manifest order: columns
        ``slice_id``, ``store_index``, ``variant``, ``source``, ``split``,
        ``patient_id`` and every name of ``METRIC_NAMES``.

    Raises:
        ValueError: The manifest and the store come from different ingestion
            runs, or a row has ``has_lowq`` but the store has no
            ``image_lowq`` array.
    """
    started = time.perf_counter()
    chunk_size = int(params.get("chunk_size", DEFAULT_CHUNK_SIZE))
    slice_store.check_rows(split_manifest["slice_id"], split_manifest["store_index"])
    manifest = split_manifest.reset_index(drop=True)

    variants = [("clean", "image", manifest)]
    lowq = manifest[manifest["has_lowq"].astype(bool)]
    if len(lowq):
        if not slice_store.has("image_lowq"):
            raise ValueError(
                f"{len(lowq)} manifest rows have has_lowq but the slice store has no image_lowq array; "
                "rerun kedro run --pipeline=ingestion"
            )
        variants.append(("lowq", "image_lowq", lowq))

    tables = []
    for variant, array_name, rows in variants:
        metrics = _quality_of_rows(
            slice_store,
            array_name,
            rows["store_index"].to_numpy(dtype=np.int64),
            rows["has_hu"].to_numpy(dtype=bool),
            chunk_size,
        )
        identifiers = rows[["slice_id", "store_index", "source", "split", "patient_id"]].reset_index(drop=True)
        identifiers.insert(2, "variant", variant)
        tables.append(pd.concat([identifiers, metrics], axis=1))
    quality = pd.concat(tables, ignore_index=True)

    logger.info(
        "Quality metrics for %d candidates (%d clean, %d lowq) in %.1f s",
        len(quality),
        int((quality["variant"] == "clean").sum()),
        int((quality["variant"] == "lowq").sum()),
        time.perf_counter() - started,
    )
    return quality


def _selection_summary(
    quality: pd.DataFrame,
    rules: list[Rule],
    failed: pd.DataFrame,
    flagged: pd.DataFrame,
    subset: pd.DataFrame,
    min_failed: int,
    target_size: int | None,
) -> dict[str, Any]:
    """Collect the thresholds used (absolute values) and the selection counts."""
    return {
        "n_candidates": len(quality),
        "candidates_by_variant": quality["variant"].value_counts().to_dict(),
        "min_failed_rules": min_failed,
        "target_size": None if target_size is None else int(target_size),
        "thresholds": {
            rule.name: {
                "metric": rule.metric,
                "direction": rule.direction,
                "threshold": None if np.isnan(rule.threshold) else rule.threshold,
                "quantile": rule.quantile,
                "n_failed": int(failed[rule.name].sum()),
            }
            for rule in rules
        },
        "n_flagged": len(flagged),
        "n_selected": len(subset),
        "selected_by_variant": subset["variant"].value_counts().to_dict(),
        "selected_by_source": subset["source"].value_counts().to_dict(),
        "selected_by_split": subset["split"].value_counts().to_dict(),
        "selected_by_n_failed_rules": {str(k): int(v) for k, v in subset["n_failed_rules"].value_counts().items()},
    }


def select_low_quality(quality: pd.DataFrame, params: Mapping[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Select the candidates that fail the quality rules, worst first.

    Args:
        quality: Output of ``compute_quality_metrics``.
        params: The ``curation`` parameters. ``rules`` maps a rule name to
            one of ``above``, ``below``, ``above_quantile`` or
            ``below_quantile`` and an optional ``metric``, and a null rule is
            skipped. ``min_failed_rules`` defaults to 1. ``target_size``
            defaults to 1000, and null means no cap.

    Returns:
        The subset and a summary. The subset has the quality table's columns
        plus ``failed_rules`` (comma-separated rule names), ``n_failed_rules``,
        ``severity`` and ``pair_index`` (0..n-1), sorted by most failed rules,
        then highest severity, then ``slice_id`` and ``variant``. The summary
        lists the absolute thresholds used and the counts.

    Raises:
        ValueError: A rule is invalid, or ``min_failed_rules`` or
            ``target_size`` is below 1.
    """
    min_failed = int(params.get("min_failed_rules", 1))
    target_size = params.get("target_size", 1000)
    if min_failed < 1:
        raise ValueError(f"curation.min_failed_rules is {min_failed}; it must be at least 1")
    if target_size is not None and int(target_size) < 1:
        raise ValueError(f"curation.target_size is {target_size}; use a positive count or null for no cap")

    rules = resolve_rules(quality, params.get("rules") or {})
    failed = failed_rule_matrix(quality, rules)
    scored = quality.copy()
    scored["failed_rules"] = failed_rule_names(failed)
    scored["n_failed_rules"] = failed.sum(axis=1).astype(np.int64)
    scored["severity"] = severity_scores(quality, rules, failed)

    flagged = scored[scored["n_failed_rules"] >= min_failed]
    flagged = flagged.sort_values(
        ["n_failed_rules", "severity", "slice_id", "variant"], ascending=[False, False, True, True], kind="mergesort"
    )
    subset = flagged if target_size is None else flagged.head(int(target_size))
    subset = subset.reset_index(drop=True)
    subset["pair_index"] = np.arange(len(subset), dtype=np.int64)

    summary = _selection_summary(quality, rules, failed, flagged, subset, min_failed, target_size)
    for rule in rules:
        if np.isnan(rule.threshold):
            logger.info("Curation rule %s is off: metric %s has no finite value", rule.name, rule.metric)
    logger.info(
        "Selected %d of %d candidates (%d failed at least %d rule(s); target size %s)",
        len(subset),
        len(quality),
        len(flagged),
        min_failed,
        target_size,
    )
    if len(subset) == 0:
        logger.warning("No candidate failed %d curation rule(s); the dehazing subset is empty", min_failed)
    return subset, summary


def _ordered_pairs(subset: pd.DataFrame) -> pd.DataFrame:
    if "pair_index" not in subset:
        return subset.reset_index(drop=True).assign(pair_index=np.arange(len(subset), dtype=np.int64))
    ordered = subset.sort_values("pair_index").reset_index(drop=True)
    if not np.array_equal(ordered["pair_index"].to_numpy(), np.arange(len(ordered))):
        raise ValueError(
            "dehazing_subset.pair_index is not 0..n-1 without gaps or repeats; rerun kedro run --pipeline=curation"
        )
    return ordered


def make_enhanced_references(
    slice_store: SliceStore, subset: pd.DataFrame, params: Mapping[str, Any]
) -> SliceStore:
    """Build the dehazing pairs: each selected (hazy) slice and its enhanced reference.

    Args:
        slice_store: The harmonised slice store.
        subset: Output of ``select_low_quality``; row ``pair_index`` i becomes
            row i of the pairs.
        params: The ``curation`` parameters; ``enhancement.steps`` is the
            chain passed to ``enhance_image``.

    Returns:
        A slice store with ``image`` (the hazy slice: ``image_lowq`` for
        variant ``lowq``, else ``image``) and ``image_enhanced``; its
        attributes list ``slice_ids``, ``variants`` and the steps.

    Raises:
        ValueError: ``pair_index`` is not 0..n-1, a variant is unknown, or a
            ``lowq`` row points at a store without ``image_lowq``.
    """
    started = time.perf_counter()
    pairs = _ordered_pairs(subset)
    steps = list((params.get("enhancement") or {}).get("steps") or DEFAULT_ENHANCEMENT_STEPS)
    unknown = set(pairs["variant"]) - {"clean", "lowq"}
    if unknown:
        raise ValueError(f"dehazing_subset has unknown variants {sorted(unknown)}; expected 'clean' or 'lowq'")
    if (pairs["variant"] == "lowq").any() and not slice_store.has("image_lowq"):
        raise ValueError("dehazing_subset has lowq rows but the slice store has no image_lowq array")

    size = slice_store.image_size
    hazy = np.empty((len(pairs), size, size), dtype=np.float32)
    enhanced = np.empty_like(hazy)
    for position, (store_index, variant) in enumerate(zip(pairs["store_index"], pairs["variant"])):
        array_name = "image_lowq" if variant == "lowq" else "image"
        hazy[position] = slice_store.arrays[array_name][int(store_index)]
        enhanced[position] = enhance_image(hazy[position], steps)

    attributes = {
        key: slice_store.attributes[key]
        for key in ("image_size", "window_level_hu", "window_width_hu")
        if key in slice_store.attributes
    }
    attributes.update(
        slice_ids=pairs["slice_id"].tolist(), variants=pairs["variant"].tolist(), enhancement_steps=steps
    )
    logger.info("Enhanced %d curated slices in %.1f s", len(pairs), time.perf_counter() - started)
    return SliceStore(arrays={"image": hazy, "image_enhanced": enhanced}, attributes=attributes)


def plot_quality_histograms(
    quality: pd.DataFrame, subset: pd.DataFrame, summary: Mapping[str, Any], params: Mapping[str, Any]
) -> Figure:
    """Draw the histogram of each metric, selected and accepted candidates apart, with the thresholds used."""
    selected = _selected_mask(quality, subset)
    figure_params = params.get("figures") or {}
    return plot_metric_histograms(
        quality,
        selected,
        summary.get("thresholds", {}),
        columns=int(figure_params.get("histogram_columns", 3)),
        panel_size_in=float(figure_params.get("panel_size_in", 3.0)),
    )


def plot_curation_examples(
    slice_store: SliceStore,
    quality: pd.DataFrame,
    subset: pd.DataFrame,
    dehazing_pairs: SliceStore,
    summary: Mapping[str, Any],
    params: Mapping[str, Any],
) -> Figure:
    """Draw example selected slices (hazy and enhanced) and example accepted slices.

    Selected examples are spread evenly over the subset, which is sorted worst
    first. Accepted examples are drawn at random (``figures.seed``) from the
    candidates not selected; their titles list the rules they fail, if any.
    """
    figure_params = params.get("figures") or {}
    n_examples = int(figure_params.get("n_examples", 6))
    rng = np.random.default_rng(int(figure_params.get("seed", 0)))

    pairs = _ordered_pairs(subset)
    chosen = np.unique(np.linspace(0, len(pairs) - 1, num=min(n_examples, len(pairs))).round().astype(int))
    selected_examples = [
        (
            np.asarray(dehazing_pairs.arrays["image"][i], dtype=np.float32),
            np.asarray(dehazing_pairs.arrays["image_enhanced"][i], dtype=np.float32),
            f"{pairs.loc[i, 'variant']}: {pairs.loc[i, 'failed_rules']}",
        )
        for i in chosen
    ]

    accepted = quality[~_selected_mask(quality, subset)].reset_index(drop=True)
    rules = rules_from_summary(summary)
    accepted_failed = failed_rule_names(failed_rule_matrix(accepted, rules)) if rules else None
    picks = np.sort(rng.choice(len(accepted), size=min(n_examples, len(accepted)), replace=False))
    accepted_examples = []
    for i in picks:
        array_name = "image_lowq" if accepted.loc[i, "variant"] == "lowq" else "image"
        failed_text = accepted_failed.iloc[i] if accepted_failed is not None else ""
        accepted_examples.append(
            (
                np.asarray(slice_store.arrays[array_name][int(accepted.loc[i, "store_index"])], dtype=np.float32),
                f"{accepted.loc[i, 'variant']}: {failed_text or 'no failed rule'}",
            )
        )
    return plot_examples(
        selected_examples, accepted_examples, panel_size_in=float(figure_params.get("panel_size_in", 3.0))
    )


def _selected_mask(quality: pd.DataFrame, subset: pd.DataFrame) -> np.ndarray:
    """Return True for each quality row whose (slice_id, variant) is in the subset."""
    chosen = set(zip(subset["slice_id"], subset["variant"]))
    return np.array([key in chosen for key in zip(quality["slice_id"], quality["variant"])], dtype=bool)
