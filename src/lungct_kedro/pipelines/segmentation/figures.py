"""Figures of the segmentation pipeline."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

# Transparent background, ground-glass opacity in yellow, consolidation in red.
CLASS_COLOURS = ListedColormap([(0, 0, 0, 0), (1.0, 0.85, 0.1, 0.55), (0.9, 0.1, 0.1, 0.6)])


def plot_overlays(
    images: np.ndarray,
    references: np.ndarray | None,
    predictions: np.ndarray,
    titles: Sequence[str],
    title: str = "Test slices with reference and predicted lesions\nyellow = ground-glass, red = consolidation",
) -> Figure:
    """Draw each slice with its predicted mask, and its reference when given, overlaid.

    One row per slice: the image, the reference (if ``references`` is not
    None) and the prediction. Colours: yellow ground-glass opacity, red
    consolidation (or any lesion for binary masks).
    """
    n_rows = max(len(images), 1)
    n_columns = 3 if references is not None else 2
    figure = Figure(figsize=(3 * n_columns, 3 * n_rows), layout="constrained")
    axes = figure.subplots(n_rows, n_columns, squeeze=False)
    for row, (image, prediction, name) in enumerate(zip(images, predictions, titles)):
        panels: list[tuple[np.ndarray | None, str]] = [(None, "image")]
        if references is not None:
            panels.append((references[row], "reference"))
        panels.append((prediction, "prediction"))
        for column, (overlay, panel) in enumerate(panels):
            axis = axes[row, column]
            axis.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
            if overlay is not None:
                axis.imshow(overlay, cmap=CLASS_COLOURS, vmin=0, vmax=2, interpolation="nearest")
            axis.set_title(f"{panel}: {name}" if column == 0 else panel, fontsize=8)
            axis.set_axis_off()
    figure.suptitle(title)
    return figure


def plot_training_curves(history: pd.DataFrame, best_iteration: int | None = None) -> Figure:
    """Plot training loss and validation Dice against iteration, marking the kept checkpoint."""
    figure = Figure(figsize=(9, 3.5), layout="constrained")
    loss_axis, dice_axis = figure.subplots(1, 2)
    loss_axis.plot(history["iteration"], history["train_loss"], label="training loss (every term of the method)")
    loss_axis.set_xlabel("iteration")
    loss_axis.set_ylabel("loss")
    loss_axis.legend()
    for column, label in [("val_dice", "validation Dice, per-slice mean"), ("val_dice_pooled", "validation Dice, pooled")]:
        if column in history:
            points = history.dropna(subset=[column])
            dice_axis.plot(points["iteration"], points[column], marker="o", label=label)
    if best_iteration is not None:
        dice_axis.axvline(best_iteration, color="grey", linestyle="--", label=f"kept checkpoint (iteration {best_iteration})")
    dice_axis.set_xlabel("iteration")
    dice_axis.set_ylabel("Dice")
    dice_axis.set_ylim(0, 1)
    dice_axis.legend()
    return figure
