"""Figures of the classification pipeline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure


def plot_confusion_matrices(matrices: Mapping[str, np.ndarray], classes: Sequence[str], title: str) -> Figure:
    """Draw one confusion matrix per method, rows reference and columns predicted, with counts."""
    figure = Figure(figsize=(4 * len(matrices), 4), layout="constrained")
    axes = figure.subplots(1, len(matrices), squeeze=False)[0]
    for axis, (method, matrix) in zip(axes, matrices.items()):
        axis.imshow(matrix, cmap="Blues", vmin=0, vmax=max(int(matrix.max()), 1))
        for (row, column), count in np.ndenumerate(matrix):
            colour = "white" if count > matrix.max() / 2 else "black"
            axis.text(column, row, str(int(count)), ha="center", va="center", color=colour)
        axis.set_xticks(range(len(classes)), classes, rotation=30)
        axis.set_yticks(range(len(classes)), classes)
        axis.set_xlabel("predicted")
        axis.set_ylabel("reference")
        axis.set_title(method)
    figure.suptitle(f"Confusion matrices: {title}")
    return figure


def plot_budget_comparison(results: Mapping[str, Mapping[str, Any]], methods: Sequence[str], split: str) -> Figure:
    """Plot accuracy (mean ± std over runs) per method.

    With several budgets, accuracy against the number of labeled slices;
    with one, a bar per method.
    """
    figure = Figure(figsize=(6.5, 4), layout="constrained")
    axis = figure.subplots()
    budgets = list(results)
    if len(budgets) > 1:
        for method in methods:
            n_labeled = [results[budget][method]["n_labeled"] for budget in budgets]
            means = [results[budget][method]["accuracy"]["mean"] for budget in budgets]
            stds = [results[budget][method]["accuracy"]["std"] for budget in budgets]
            axis.errorbar(n_labeled, means, yerr=stds, marker="o", capsize=4, label=method)
        axis.set_xlabel("labeled training slices")
        axis.legend()
    else:
        entries = results[budgets[0]]
        means = [entries[method]["accuracy"]["mean"] for method in methods]
        stds = [entries[method]["accuracy"]["std"] for method in methods]
        colours = ["0.6", "tab:blue", "tab:orange"][: len(methods)]
        axis.bar(range(len(methods)), means, yerr=stds, capsize=6, color=colours)
        axis.set_xticks(range(len(methods)), methods)
        axis.set_xlabel(f"method (budget {budgets[0]}, {entries[methods[0]]['n_runs']} runs)")
    axis.set_ylabel(f"{split} accuracy, mean ± std")
    axis.set_ylim(0, 1)
    return figure
