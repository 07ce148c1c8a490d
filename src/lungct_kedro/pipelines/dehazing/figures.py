"""Figures of the dehazing pipeline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lungct_kedro.training.enhancement import psnr, ssim


def plot_before_after(
    examples: Sequence[Mapping[str, np.ndarray]],
    row_titles: Sequence[str],
    columns: Sequence[str],
    title: str,
) -> Figure:
    """Draw a grid with one example slice per row and one method per column.

    Every panel is shown on the fixed [0, 1] grey scale, so exposure and
    contrast changes stay visible. When an example has a ``reference``,
    every other panel is captioned with its PSNR (dB) and SSIM against it.

    Args:
        examples: Per row, column name → 2D slice in [0, 1].
        row_titles: Label of each row (set and faults); `` + `` starts a new line.
        columns: Column names, in order (keys of each example).
        title: Figure title.
    """
    n_rows = max(len(examples), 1)
    figure = Figure(figsize=(2.1 * len(columns) + 0.6, 2.3 * n_rows + 0.6), layout="constrained")
    axes = figure.subplots(n_rows, len(columns), squeeze=False)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    for row, (example, row_title) in enumerate(zip(examples, row_titles)):
        reference = example.get("reference")
        for column, name in enumerate(columns):
            axis = axes[row, column]
            axis.imshow(example[name], cmap="gray", vmin=0.0, vmax=1.0)
            caption = name
            if reference is not None and name != "reference":
                caption = f"{name}\n{psnr(example[name], reference):.1f} dB / {ssim(example[name], reference):.3f}"
            axis.set_title(caption, fontsize=8)
        axes[row, 0].set_ylabel(row_title.replace(" + ", "\n"), fontsize=7)
    if not examples:
        axes[0, 0].text(0.5, 0.5, "no slices", ha="center", va="center", transform=axes[0, 0].transAxes)
    figure.suptitle(title, fontsize=10)
    return figure


def plot_training_curves(history: pd.DataFrame) -> Figure:
    """Plot the training loss and the validation PSNR and SSIM against iteration."""
    figure = Figure(figsize=(10, 3.5), layout="constrained")
    loss_axis, psnr_axis, ssim_axis = figure.subplots(1, 3)
    loss_axis.plot(history["iteration"], history["train_loss"], label="training loss (L1 + SSIM)")
    loss_axis.set_xlabel("iteration")
    loss_axis.set_ylabel("loss")
    loss_axis.legend()
    for axis, column, label in [
        (psnr_axis, "val_psnr", "validation PSNR (dB)"),
        (ssim_axis, "val_ssim", "validation SSIM"),
    ]:
        if column in history:
            points = history.dropna(subset=[column])
            axis.plot(points["iteration"], points[column], marker="o")
        axis.set_xlabel("iteration")
        axis.set_ylabel(label)
    return figure
