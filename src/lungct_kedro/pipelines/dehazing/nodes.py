"""Nodes of the dehazing pipeline: slice selection, training and the benchmark against baselines."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from skimage import exposure, restoration
from scipy import ndimage

from lungct_kedro.datasets.slice_store import SliceStore
from lungct_kedro.imaging.degrade import describe_fault_plan
from lungct_kedro.imaging.enhance import enhance_image
from lungct_kedro.imaging.quality import noise_sigma, rms_contrast
from lungct_kedro.pipelines.dehazing.figures import plot_before_after, plot_training_curves
from lungct_kedro.training.enhancement import (
    DATA_RANGE,
    CleanSlices,
    load_enhancement_model,
    make_evaluation_pairs,
    psnr,
    restore_images,
    ssim,
    train_enhancement,
)

logger = logging.getLogger(__name__)

#: Methods of the benchmark, in table and figure order. ``input`` is the degraded slice itself.
METHODS = ("input", "gaussian_blur", "clahe", "nl_means", "curation_enhancement", "network")
#: Evaluation sets with a clean reference.
SYNTHETIC_SET, TWIN_SET = "synthetic_test", "phantom_twin"
ROLES = ("train", "val_pair", "test_pair", "twin_test", "no_reference")
_SELECTION_COLUMNS = ["slice_id", "store_index", "split", "source", "patient_id", "has_hu", "has_lowq"]


def _store_window(store: SliceStore) -> tuple[float, float]:
    return float(store.attributes.get("window_level_hu", -600.0)), float(store.attributes.get("window_width_hu", 1500.0))


def _stored_spacing_mm(manifest: pd.DataFrame, image_size: int) -> pd.Series:
    """Pixel spacing of the stored slice in mm: padding to a square, then resizing to ``image_size``."""
    side_px = manifest[["original_height", "original_width"]].max(axis=1).astype(float)
    spacing = manifest[["spacing_row_mm", "spacing_col_mm"]].astype(float).mean(axis=1)
    return spacing * side_px / float(image_size)


def _sample_rows(rows: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    if limit is None or len(rows) <= int(limit):
        return rows
    return rows.sample(n=int(limit), random_state=seed).sort_values("store_index")


def select_dehazing_slices(
    split_manifest: pd.DataFrame, dehazing_subset: pd.DataFrame, params: Mapping[str, Any], image_size: int
) -> pd.DataFrame:
    """Assign slices to the roles of the dehazing benchmark.

    Roles:

    * ``train``: clean slices of the train split, degraded on the fly.
    * ``val_pair``, ``test_pair``: up to ``evaluation.n_eval_pairs`` clean
      slices each of the val and test splits, degraded once.
    * ``twin_test``: up to ``n_eval_pairs`` test slices with a physical
      poor-quality twin.
    * ``no_reference``: up to ``evaluation.n_no_reference`` slices that the
      curation rules flagged as low quality (variant ``clean`` of
      ``dehazing_subset``), scored without a reference.

    Flagged slices never serve as clean references. A slice may hold two
    roles (``test_pair`` and ``twin_test``).

    Args:
        split_manifest: The manifest with its ``split`` column.
        dehazing_subset: The curation pipeline's low-quality subset.
        params: The ``dehazing`` parameters; ``sources`` (a list of source
            names, or null for all) limits the slices used.
        image_size: Side of the stored slices in px (``ingestion.image_size``).

    Returns:
        One row per slice and role: ``slice_id``, ``store_index``, ``split``,
        ``source``, ``patient_id``, ``has_hu``, ``has_lowq``, ``spacing_mm``
        (of the stored slice), ``role``, ``pair_index`` (into
        ``dehazing_pairs`` for ``no_reference`` rows, else -1) and
        ``failed_rules``.

    Raises:
        ValueError: ``sources`` names an unknown source, or no clean slice is
            left in the train split.
    """
    manifest = split_manifest.copy()
    sources = params.get("sources")
    if sources:
        unknown = set(sources) - set(manifest["source"].unique())
        if unknown:
            raise ValueError(
                f"dehazing.sources names unknown sources {sorted(unknown)}; "
                f"known: {sorted(manifest['source'].unique())}"
            )
        manifest = manifest[manifest["source"].isin(sources)]
    manifest["spacing_mm"] = _stored_spacing_mm(manifest, image_size)
    manifest["pair_index"] = -1
    manifest["failed_rules"] = ""

    flagged = dehazing_subset[dehazing_subset["variant"] == "clean"]
    is_flagged = manifest["slice_id"].isin(flagged["slice_id"])
    clean = manifest[~is_flagged]
    seed = int(params["seed"])
    limit = params["evaluation"].get("n_eval_pairs")
    columns = [*_SELECTION_COLUMNS, "spacing_mm", "pair_index", "failed_rules"]

    parts = [
        clean[clean["split"] == "train"][columns].assign(role="train"),
        _sample_rows(clean[clean["split"] == "val"], limit, seed)[columns].assign(role="val_pair"),
        _sample_rows(clean[clean["split"] == "test"], limit, seed)[columns].assign(role="test_pair"),
        _sample_rows(manifest[(manifest["split"] == "test") & manifest["has_lowq"]], limit, seed)[columns].assign(
            role="twin_test"
        ),
    ]
    no_reference = manifest[is_flagged].drop(columns=["pair_index", "failed_rules"])
    no_reference = no_reference.merge(flagged[["slice_id", "pair_index", "failed_rules"]], on="slice_id")
    no_reference = _sample_rows(no_reference, params["evaluation"].get("n_no_reference"), seed)
    parts.append(no_reference[columns].assign(role="no_reference"))
    selected = pd.concat(parts, ignore_index=True)
    selected["pair_index"] = selected["pair_index"].astype(np.int64)
    selected["failed_rules"] = selected["failed_rules"].astype(str)

    counts = selected["role"].value_counts()
    if counts.get("train", 0) == 0:
        raise ValueError(
            "no clean slice is left in the train split for dehazing; check dehazing.sources, "
            "splits.ratios and the curation rules"
        )
    logger.info("Dehazing slices by role: %s", {role: int(counts.get(role, 0)) for role in ROLES})
    return selected


def _clean_slices(store: SliceStore, rows: pd.DataFrame) -> CleanSlices:
    indices = rows["store_index"].to_numpy(dtype=np.int64)
    images = np.asarray(store.arrays["image"][indices], dtype=np.float32)
    has_hu = rows["has_hu"].to_numpy(dtype=bool) & store.has("hu")
    if store.has("hu"):
        hu = np.asarray(store.arrays["hu"][indices], dtype=np.float32)
    else:
        hu = np.full_like(images, -1024.0)
    return CleanSlices(images, hu, has_hu, rows["spacing_mm"].to_numpy(dtype=np.float64), indices)


def _role(slices: pd.DataFrame, role: str) -> pd.DataFrame:
    return slices[slices["role"] == role].reset_index(drop=True)


def train_dehazing_model(
    slice_store: SliceStore, dehazing_slices: pd.DataFrame, params: Mapping[str, Any]
) -> tuple[dict[str, Any], pd.DataFrame, Figure]:
    """Train the restoration network and package its best checkpoint.

    Returns:
        The checkpoint (state dict and what is needed to rebuild the model),
        the training history table and its figure.
    """
    slice_store.check_rows(dehazing_slices["slice_id"], dehazing_slices["store_index"])
    window = _store_window(slice_store)
    train = _clean_slices(slice_store, _role(dehazing_slices, "train"))
    val = _clean_slices(slice_store, _role(dehazing_slices, "val_pair"))
    val_inputs, _ = make_evaluation_pairs(val, params["degradation"], int(params["seed"]), window)

    model, result = train_enhancement(train, val_inputs, val.images, params, window)
    checkpoint = {
        "state_dict": {key: value.cpu() for key, value in model.state_dict().items()},
        "model": dict(params["model"]),
        "image_size": slice_store.image_size,
        "window_hu": list(window),
        "iterations": int(params["training"]["iterations"]),
        "best_iteration": result.best_iteration,
        "monitor": "val_psnr",
        # -inf when there were no validation pairs, which JSON cannot hold.
        "best_val_score": result.best_score if np.isfinite(result.best_score) else None,
    }
    history = pd.DataFrame(result.history)
    return checkpoint, history, plot_training_curves(history)


def _baselines(params: Mapping[str, Any], curation_steps: Sequence[Mapping[str, Any]]) -> dict[str, Callable]:
    evaluation = params["evaluation"]
    sigma_px = float(evaluation["gaussian_sigma_px"])
    clip_limit = float(evaluation["clahe_clip_limit"])
    strength = float(evaluation["nl_means_strength"])

    def nl_means(image: np.ndarray) -> np.ndarray:
        sigma = float(restoration.estimate_sigma(image))
        return restoration.denoise_nl_means(
            image, h=strength * sigma, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True
        )

    return {
        "gaussian_blur": lambda image: ndimage.gaussian_filter(image, sigma_px, mode="nearest"),
        "clahe": lambda image: exposure.equalize_adapthist(image, clip_limit=clip_limit),
        "nl_means": nl_means,
        "curation_enhancement": lambda image: enhance_image(image, curation_steps),
    }


def _run_methods(
    inputs: np.ndarray,
    model_output: np.ndarray,
    baselines: Mapping[str, Callable],
    precomputed: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Return method → (n, H, W) float32 outputs in [0, 1], timing each baseline."""
    outputs = {"input": inputs}
    for name, method in baselines.items():
        if precomputed and name in precomputed:
            outputs[name] = np.asarray(precomputed[name], dtype=np.float32)
            continue
        started = time.perf_counter()
        results = [np.clip(method(np.asarray(image, dtype=np.float64)), 0.0, 1.0) for image in inputs]
        outputs[name] = np.asarray(results, dtype=np.float32).reshape(inputs.shape)
        logger.debug("%s on %d slices took %.1f s", name, len(inputs), time.perf_counter() - started)
    outputs["network"] = model_output
    return outputs


def _reference_table(
    set_name: str, rows: pd.DataFrame, faults: Sequence[str], outputs: Mapping[str, np.ndarray], references: np.ndarray
) -> pd.DataFrame:
    input_psnr = [psnr(image, reference) for image, reference in zip(outputs["input"], references)]
    input_ssim = [ssim(image, reference) for image, reference in zip(outputs["input"], references)]
    tables = []
    for method in METHODS:
        scores_psnr = [psnr(image, reference) for image, reference in zip(outputs[method], references)]
        scores_ssim = [ssim(image, reference) for image, reference in zip(outputs[method], references)]
        tables.append(
            pd.DataFrame(
                {
                    "set": set_name,
                    "slice_id": rows["slice_id"].to_numpy(),
                    "source": rows["source"].to_numpy(),
                    "faults": list(faults),
                    "method": method,
                    "psnr_db": scores_psnr,
                    "ssim": scores_ssim,
                    "psnr_change_db": np.subtract(scores_psnr, input_psnr),
                    "ssim_change": np.subtract(scores_ssim, input_ssim),
                }
            )
        )
    return pd.concat(tables, ignore_index=True)


def _summarise_reference(per_slice: pd.DataFrame) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for set_name, table in per_slice.groupby("set", sort=False):
        methods = {}
        for method in METHODS:
            scores = table[table["method"] == method]
            methods[method] = {
                "psnr_db_mean": float(scores["psnr_db"].mean()),
                "psnr_db_std": float(scores["psnr_db"].std(ddof=0)),
                "ssim_mean": float(scores["ssim"].mean()),
                "ssim_std": float(scores["ssim"].std(ddof=0)),
                "psnr_change_db_mean": float(scores["psnr_change_db"].mean()),
                "ssim_change_mean": float(scores["ssim_change"].mean()),
            }
        summary[str(set_name)] = {"n_pairs": int(table["slice_id"].nunique()), "methods": methods}
    return summary


def _no_reference_table(rows: pd.DataFrame, outputs: Mapping[str, np.ndarray]) -> pd.DataFrame:
    before_noise = noise_sigma(outputs["input"])
    before_contrast = rms_contrast(outputs["input"])
    tables = []
    for method in METHODS[1:]:
        after_noise = noise_sigma(outputs[method]) if len(rows) else np.zeros(0)
        after_contrast = rms_contrast(outputs[method]) if len(rows) else np.zeros(0)
        tables.append(
            pd.DataFrame(
                {
                    "slice_id": rows["slice_id"].to_numpy(),
                    "source": rows["source"].to_numpy(),
                    "split": rows["split"].to_numpy(),
                    "failed_rules": rows["failed_rules"].to_numpy(),
                    "method": method,
                    "noise_sigma_before": before_noise,
                    "noise_sigma_after": after_noise,
                    "noise_sigma_change": after_noise - before_noise,
                    "rms_contrast_before": before_contrast,
                    "rms_contrast_after": after_contrast,
                    "rms_contrast_change": after_contrast - before_contrast,
                }
            )
        )
    return pd.concat(tables, ignore_index=True)


def _summarise_no_reference(table: pd.DataFrame) -> dict[str, Any]:
    n_slices = int(table["slice_id"].nunique())
    methods = {}
    if n_slices:
        for method, scores in table.groupby("method", sort=False):
            methods[str(method)] = {
                column: float(scores[column].mean())
                for column in (
                    "noise_sigma_before",
                    "noise_sigma_after",
                    "noise_sigma_change",
                    "rms_contrast_before",
                    "rms_contrast_after",
                    "rms_contrast_change",
                )
            }
    return {"n_slices": n_slices, "statistic": "mean over slices", "methods": methods}


def _figure_examples(sets: Mapping[str, dict[str, Any]], n_rows: int) -> tuple[list[dict[str, np.ndarray]], list[str]]:
    """Pick up to ``n_rows`` example slices, taking one from each reference set in turn."""
    examples, titles = [], []
    positions = dict.fromkeys(sets, 0)
    while len(examples) < n_rows and any(positions[name] < len(sets[name]["references"]) for name in sets):
        for name, data in sets.items():
            index = positions[name]
            if index >= len(data["references"]) or len(examples) >= n_rows:
                continue
            positions[name] += 1
            examples.append(
                {**{method: data["outputs"][method][index] for method in METHODS}, "reference": data["references"][index]}
            )
            titles.append(f"{name}\n{data['faults'][index]}")
    return examples, titles


def evaluate_dehazing_model(
    slice_store: SliceStore,
    dehazing_pairs: SliceStore,
    dehazing_slices: pd.DataFrame,
    checkpoint: Mapping[str, Any],
    params: Mapping[str, Any],
    curation_params: Mapping[str, Any],
) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame, Figure, Figure]:
    """Benchmark the network against classical baselines on held-out slices.

    Reference sets: ``synthetic_test`` (test slices degraded once with the
    fixed seed) and ``phantom_twin`` (the phantom's physically simulated twin
    ``image_lowq`` against ``image``). Each method is scored with PSNR and
    SSIM (scikit-image, data range 1.0 on lung-windowed [0, 1] slices). The
    flagged slices without a reference (``no_reference`` role) get the change
    of ``noise_sigma`` and ``rms_contrast`` instead. Their input and their
    curation enhancement are read from ``dehazing_pairs``.

    Args:
        slice_store: The slice store.
        dehazing_pairs: The curation pipeline's pairs (``image`` = hazy slice,
            ``image_enhanced`` = its enhanced reference, row = ``pair_index``).
        dehazing_slices: Output of ``select_dehazing_slices``.
        checkpoint: The trained network.
        params: The ``dehazing`` parameters.
        curation_params: The ``curation`` parameters; ``enhancement.steps``
            is the chain passed to ``enhance_image``.

    Returns:
        The metrics, the per-slice table of the reference sets, the
        no-reference table, the before/after figure of the reference sets and
        the figure of the no-reference slices.
    """
    slice_store.check_rows(dehazing_slices["slice_id"], dehazing_slices["store_index"])
    window = _store_window(slice_store)
    model, device = load_enhancement_model(checkpoint, params.get("device", "auto"))
    batch_size = int(params["evaluation"]["batch_size"])
    baselines = _baselines(params, curation_params["enhancement"]["steps"])

    sets: dict[str, dict[str, Any]] = {}
    test_rows = _role(dehazing_slices, "test_pair")
    if len(test_rows):
        test = _clean_slices(slice_store, test_rows)
        inputs, plans = make_evaluation_pairs(test, params["degradation"], int(params["seed"]), window)
        sets[SYNTHETIC_SET] = {
            "rows": test_rows,
            "inputs": inputs,
            "references": test.images,
            "faults": [describe_fault_plan(plan) for plan in plans],
        }
    twin_rows = _role(dehazing_slices, "twin_test")
    if len(twin_rows) and slice_store.has("image_lowq"):
        indices = twin_rows["store_index"].to_numpy(dtype=np.int64)
        sets[TWIN_SET] = {
            "rows": twin_rows,
            "inputs": np.asarray(slice_store.arrays["image_lowq"][indices], dtype=np.float32),
            "references": np.asarray(slice_store.arrays["image"][indices], dtype=np.float32),
            "faults": ["physical twin"] * len(twin_rows),
        }

    tables = []
    for name, data in sets.items():
        network = restore_images(model, data["inputs"], device, batch_size)
        data["outputs"] = _run_methods(data["inputs"], network, baselines)
        tables.append(_reference_table(name, data["rows"], data["faults"], data["outputs"], data["references"]))
    per_slice = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=["set", "method"])

    no_reference_rows = _role(dehazing_slices, "no_reference")
    pair_indices = no_reference_rows["pair_index"].to_numpy(dtype=np.int64)
    size = slice_store.image_size
    hazy = np.asarray(dehazing_pairs.arrays["image"][pair_indices], dtype=np.float32).reshape(-1, size, size)
    precomputed = {}
    if dehazing_pairs.has("image_enhanced"):
        precomputed["curation_enhancement"] = np.asarray(
            dehazing_pairs.arrays["image_enhanced"][pair_indices], dtype=np.float32
        ).reshape(-1, size, size)
    no_reference_outputs = _run_methods(hazy, restore_images(model, hazy, device, batch_size), baselines, precomputed)
    no_reference = _no_reference_table(no_reference_rows, no_reference_outputs)

    metrics = {
        "data_range": DATA_RANGE,
        "intensity": f"lung-windowed slices in [0, 1] (level {window[0]:g} HU, width {window[1]:g} HU)",
        "psnr": "dB, skimage.metrics.peak_signal_noise_ratio with data_range=1.0 (identical images capped at 100 dB)",
        "ssim": "skimage.metrics.structural_similarity with data_range=1.0 (7 px window)",
        "change": "method minus the degraded input, per slice, then averaged",
        "architecture": checkpoint["model"]["architecture"],
        "best_iteration": checkpoint["best_iteration"],
        "best_val_psnr_db": checkpoint["best_val_score"],
        "methods": list(METHODS),
        "reference_sets": _summarise_reference(per_slice) if len(per_slice) else {},
        "no_reference": _summarise_no_reference(no_reference),
    }
    for name, summary in metrics["reference_sets"].items():
        scores = summary["methods"]
        logger.info(
            "%s (%d pairs): PSNR input %.2f dB, network %.2f dB; SSIM input %.3f, network %.3f",
            name,
            summary["n_pairs"],
            scores["input"]["psnr_db_mean"],
            scores["network"]["psnr_db_mean"],
            scores["input"]["ssim_mean"],
            scores["network"]["ssim_mean"],
        )

    n_rows = int(params["evaluation"]["figure_rows"])
    examples, titles = _figure_examples(sets, n_rows)
    before_after = plot_before_after(
        examples,
        titles,
        [*METHODS, "reference"],
        "Held-out pairs: degraded input, each method and the clean reference (PSNR / SSIM, data range 1)",
    )
    no_reference_examples = [
        {method: no_reference_outputs[method][index] for method in METHODS} for index in range(min(n_rows, len(hazy)))
    ]
    no_reference_figure = plot_before_after(
        no_reference_examples,
        [f"{row.source}: {row.failed_rules}" for row in no_reference_rows.head(n_rows).itertuples()],
        list(METHODS),
        "Flagged low-quality slices without a clean reference: input and each method",
    )
    return metrics, per_slice, no_reference, before_after, no_reference_figure
