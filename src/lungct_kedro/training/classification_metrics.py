"""Classification metrics from a confusion matrix, in NumPy.

Conventions, so that no reported value is NaN on small test sets:

* recall is reported only for classes with at least one reference slice
  (the others are listed in ``classes_absent``);
* balanced accuracy is the mean recall over those classes;
* F1 of a class is ``2·TP / (2·TP + FP + FN)``, taken over the classes that
  occur in the reference or in the predictions, so a class that is predicted
  but absent from the reference scores 0; macro-F1 is their mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def confusion_matrix(references: Sequence[int], predictions: Sequence[int], n_classes: int) -> np.ndarray:
    """Count (reference, prediction) pairs.

    Returns:
        int64 array of shape (n_classes, n_classes): rows are reference
        classes, columns predicted classes.

    Raises:
        ValueError: The sequences differ in length, or a class index is
            outside [0, n_classes).
    """
    references = np.asarray(references, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    if references.shape != predictions.shape:
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
    for name, values in (("reference", references), ("prediction", predictions)):
        if values.size and (values.min() < 0 or values.max() >= n_classes):
            raise ValueError(f"{name} class indices must lie in [0, {n_classes}), got {sorted(set(values.tolist()))}")
    counts = np.bincount(references * n_classes + predictions, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes)


def classification_scores(confusion: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Compute accuracy, balanced accuracy, macro-F1 and per-class recall.

    Args:
        confusion: Square count matrix, rows reference, columns prediction.
        class_names: One name per row.

    Returns:
        ``n_slices``, ``accuracy``, ``balanced_accuracy``, ``macro_f1``,
        ``recall`` and ``f1`` (class name → value), ``support`` (reference
        slices per class) and ``classes_absent`` (classes without reference
        slices).

    Raises:
        ValueError: The matrix is not square, does not match
            ``class_names``, or counts no slice.
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1] or len(confusion) != len(class_names):
        raise ValueError(f"confusion matrix of shape {confusion.shape} does not match {len(class_names)} classes")
    total = int(confusion.sum())
    if total == 0:
        raise ValueError("the confusion matrix counts no slice, so no metric is defined")

    true_positives = np.diag(confusion)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    present = support > 0
    recall = {name: float(true_positives[i] / support[i]) for i, name in enumerate(class_names) if present[i]}

    # 2·TP + FP + FN = support + predicted, which is positive for every class kept here.
    scored = (support + predicted) > 0
    f1 = {
        name: float(2 * true_positives[i] / (support[i] + predicted[i]))
        for i, name in enumerate(class_names)
        if scored[i]
    }
    return {
        "n_slices": total,
        "accuracy": float(true_positives.sum() / total),
        "balanced_accuracy": float(np.mean(list(recall.values()))),
        "macro_f1": float(np.mean(list(f1.values()))),
        "recall": recall,
        "f1": f1,
        "support": {name: int(support[i]) for i, name in enumerate(class_names)},
        "classes_absent": [name for i, name in enumerate(class_names) if not present[i]],
    }


def mean_and_std(values: Sequence[float]) -> tuple[float, float]:
    """Return the mean and the sample standard deviation (ddof = 1) of ``values``.

    One value gives a standard deviation of 0.0, since a spread cannot be
    estimated from a single run.

    Raises:
        ValueError: ``values`` is empty or contains NaN.
    """
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        raise ValueError("no values to summarise")
    if np.isnan(array).any():
        raise ValueError(f"cannot summarise values containing NaN: {array.tolist()}")
    std = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return float(array.mean()), std
