"""Figures of the pretraining pipeline."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def plot_pretraining_curves(history: pd.DataFrame, out_dim: int, min_std_ratio: float) -> Figure:
    """Plot the training loss and the embedding std (collapse watch) against iteration."""
    figure = Figure(figsize=(10, 3.8), layout="constrained")
    loss_axis, std_axis = figure.subplots(1, 2)
    loss_axis.plot(history["iteration"], history["train_loss"], marker=".")
    loss_axis.set_xlabel("iteration")
    loss_axis.set_ylabel("training loss")
    loss_axis.set_title("Loss (mean since the previous point)")
    points = history.dropna(subset=["embedding_std"]) if "embedding_std" in history else history.iloc[:0]
    std_axis.plot(points["iteration"], points["embedding_std"], marker="o", label="embedding std")
    std_axis.axhline(1 / math.sqrt(out_dim), color="green", linestyle="--", label="1/sqrt(d), healthy")
    std_axis.axhline(min_std_ratio / math.sqrt(out_dim), color="red", linestyle=":", label="collapse threshold")
    std_axis.set_ylim(bottom=0)
    std_axis.set_xlabel("iteration")
    std_axis.set_ylabel("std of L2-normalised projections")
    std_axis.set_title("Collapse watch")
    std_axis.legend(fontsize=8)
    return figure


def plot_transfer_comparison(table: pd.DataFrame, evaluation_split: str) -> Figure:
    """Draw accuracy (mean ± std over runs) per mode, scratch beside pre-trained, one panel per budget."""
    budgets = list(dict.fromkeys(table["label_budget"]))
    figure = Figure(figsize=(4.5 * len(budgets), 4), layout="constrained")
    axes = figure.subplots(1, len(budgets), squeeze=False)[0]
    inits = list(dict.fromkeys(table["init"]))
    for axis, budget in zip(axes, budgets):
        rows = table[table["label_budget"] == budget]
        modes = list(dict.fromkeys(rows["mode"]))
        width = 0.8 / len(inits)
        for offset, init in enumerate(inits):
            chosen = rows[rows["init"] == init].set_index("mode").reindex(modes)
            positions = np.arange(len(modes)) + (offset - (len(inits) - 1) / 2) * width
            axis.bar(positions, chosen["accuracy_mean"], width, yerr=chosen["accuracy_std"], capsize=4, label=init)
        axis.set_xticks(range(len(modes)), modes)
        axis.set_ylim(0, 1.05)
        axis.set_ylabel(f"{evaluation_split} accuracy")
        axis.set_title(f"budget {budget}, {int(rows['n_runs'].iloc[0])} runs each")
        axis.legend()
    figure.suptitle("Transfer: scratch vs pre-trained encoder (mean ± sample std)")
    return figure
