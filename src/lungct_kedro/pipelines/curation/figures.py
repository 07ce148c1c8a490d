"""Figures of the curation pipeline."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from lungct_kedro.imaging.quality import METRIC_NAMES

#: Axis label of each metric, with its unit.
METRIC_LABELS = {
    "noise_sigma": "noise sigma (intensity, fraction of window)",
    "rms_contrast": "RMS contrast (intensity std)",
    "mean_exposure": "mean exposure (intensity)",
    "underexposed_fraction": "underexposed pixels (fraction < 0.02)",
    "overexposed_fraction": "overexposed pixels (fraction > 0.98)",
    "dynamic_range": "dynamic range p99 - p1 (intensity)",
    "laplacian_variance": "Laplacian variance (intensity²)",
    "haze_score": "haze score (dark channel, 0-1)",
    "lung_soft_tissue_cnr": "soft tissue / lung CNR (ratio)",
}
ACCEPTED_COLOUR = "tab:blue"
SELECTED_COLOUR = "tab:red"


def plot_metric_histograms(
    quality: pd.DataFrame,
    selected: np.ndarray,
    thresholds: Mapping[str, Mapping[str, Any]],
    columns: int = 3,
    panel_size_in: float = 3.0,
) -> Figure:
    """Draw one histogram per metric, accepted and selected candidates stacked.

    Args:
        quality: One row per candidate with every metric column.
        selected: Boolean (len(quality),), True for candidates in the subset.
        thresholds: The summary's ``thresholds`` (rule name → ``metric``,
            ``direction``, absolute ``threshold``); each is drawn as a dashed
            vertical line on its metric's panel.
        columns: Panels per row.
        panel_size_in: Width and height of one panel in inches.

    Returns:
        The figure. A metric without finite values gets an empty panel labelled
        'no finite values'.
    """
    n_rows = math.ceil(len(METRIC_NAMES) / columns)
    figure = Figure(figsize=(panel_size_in * columns * 1.2, panel_size_in * n_rows), layout="constrained")
    axes = figure.subplots(n_rows, columns, squeeze=False).ravel()
    for axis, metric in zip(axes, METRIC_NAMES):
        values = quality[metric].to_numpy(dtype=np.float64)
        finite = np.isfinite(values)
        axis.set_xlabel(METRIC_LABELS[metric], fontsize=8)
        axis.set_ylabel("candidates (log scale)", fontsize=8)
        axis.tick_params(labelsize=7)
        if not finite.any():
            axis.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=axis.transAxes)
            continue
        edges = np.histogram_bin_edges(values[finite], bins=30)
        axis.hist(
            [values[finite & ~selected], values[finite & selected]],
            bins=edges,
            stacked=True,
            color=[ACCEPTED_COLOUR, SELECTED_COLOUR],
            label=[f"accepted ({int((finite & ~selected).sum())})", f"selected ({int((finite & selected).sum())})"],
        )
        axis.set_yscale("log")
        axis.yaxis.set_minor_formatter(NullFormatter())
        for name, entry in thresholds.items():
            if entry["metric"] != metric or entry.get("threshold") is None:
                continue
            sign = ">" if entry["direction"] == "above" else "<"
            axis.axvline(entry["threshold"], color="black", linestyle="--", linewidth=1.0)
            axis.plot([], [], color="black", linestyle="--", label=f"{name}: {sign} {entry['threshold']:.3g}")
        axis.legend(fontsize=6)
    for axis in axes[len(METRIC_NAMES) :]:
        axis.set_axis_off()
    figure.suptitle("Quality metrics of all candidates; dashed lines are the thresholds used")
    return figure


def plot_examples(
    selected: Sequence[tuple[np.ndarray, np.ndarray, str]],
    accepted: Sequence[tuple[np.ndarray, str]],
    panel_size_in: float = 3.0,
) -> Figure:
    """Draw selected slices (hazy | enhanced) beside accepted slices.

    Args:
        selected: ``(hazy, enhanced, title)`` per selected example.
        accepted: ``(image, title)`` per accepted example.
        panel_size_in: Width and height of one panel in inches.

    Returns:
        A figure with one row per example and three columns: hazy, enhanced
        and accepted, all shown on the [0, 1] intensity scale.
    """
    n_rows = max(len(selected), len(accepted), 1)
    figure = Figure(figsize=(3 * panel_size_in, n_rows * panel_size_in), layout="constrained")
    axes = figure.subplots(n_rows, 3, squeeze=False)
    for row in range(n_rows):
        if row < len(selected):
            hazy, enhanced, title = selected[row]
            _show(axes[row, 0], hazy, f"selected, hazy\n{title}")
            _show(axes[row, 1], enhanced, "enhanced reference")
        if row < len(accepted):
            image, title = accepted[row]
            _show(axes[row, 2], image, f"accepted\n{title}")
        for axis in axes[row]:
            axis.set_axis_off()
    if not selected:
        axes[0, 0].text(0.5, 0.5, "no slice selected", ha="center", va="center", transform=axes[0, 0].transAxes)
    figure.suptitle("Curated low-quality slices with enhanced references, and accepted slices")
    return figure


def _show(axis, image: np.ndarray, title: str) -> None:
    axis.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
    axis.set_title(title, fontsize=7, wrap=True)
