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
    references: np.ndarray,
    predictions: np.ndarray,
    titles: Sequence[str],
) -> Figure:
    """Draw each slice with its reference and its predicted mask overlaid.

    One row per slice: the image, the reference and the prediction. Colours:
    yellow ground-glass opacity, red consolidation (or any lesion for binary
    masks).
    """
    n_rows = max(len(images), 1)
    figure = Figure(figsize=(9, 3 * n_rows), layout="constrained")
    axes = figure.subplots(n_rows, 3, squeeze=False)
    for row, (image, reference, prediction, title) in enumerate(zip(images, references, predictions, titles)):
        for column, (overlay, name) in enumerate(
            [(None, "image"), (reference, "reference"), (prediction, "prediction")]
        ):
            axis = axes[row, column]
            axis.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
            if overlay is not None:
                axis.imshow(overlay, cmap=CLASS_COLOURS, vmin=0, vmax=2, interpolation="nearest")
            axis.set_title(f"{name}: {title}" if column == 0 else name, fontsize=9)
            axis.set_axis_off()
    figure.suptitle("Test slices with reference and predicted lesions; yellow = ground-glass, red = consolidation")
    return figure


def plot_training_curves(history: pd.DataFrame) -> Figure:
    """Plot training loss and validation Dice against iteration."""
    figure = Figure(figsize=(9, 3.5), layout="constrained")
    loss_axis, dice_axis = figure.subplots(1, 2)
    loss_axis.plot(history["iteration"], history["train_loss"], label="training loss (Dice + CE)")
    loss_axis.set_xlabel("iteration")
    loss_axis.set_ylabel("loss")
    loss_axis.legend()
    for column, label in [("val_dice", "validation Dice, per-slice mean"), ("val_dice_pooled", "validation Dice, pooled")]:
        if column in history:
            points = history.dropna(subset=[column])
            dice_axis.plot(points["iteration"], points[column], marker="o", label=label)
    dice_axis.set_xlabel("iteration")
    dice_axis.set_ylabel("Dice")
    dice_axis.set_ylim(0, 1)
    dice_axis.legend()
    return figure
