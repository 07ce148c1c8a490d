"""Grouped k-fold cross-validation, the intensity-threshold floor, and their summaries.

Small labeled sets (tens of slices) give test scores that swing with the
split, so methods are compared over k folds repeated with several seeds. A
group (a patient, else a volume, else a single slice) never spans two parts
of a fold, so neighbouring slices of one scan cannot sit in training and test
at once. Every function here is a pure function of arrays and tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, GroupShuffleSplit

from lungct_kedro.training.metrics import per_slice_lesion_metrics, summarise_segmentation

#: Columns of the summary table, in order.
SUMMARY_COLUMNS = (
    "dataset",
    "method",
    "folds",
    "seeds",
    "runs",
    "dice_mean",
    "dice_mean_std",
    "dice_pooled",
    "dice_pooled_std",
    "cpu_seconds",
)


class FoldLeakageError(RuntimeError):
    """Raised when one group appears in two parts (train, val, test) of a fold."""


@dataclass(frozen=True)
class Fold:
    """One fold of one seed: positions into the list of labeled rows.

    Attributes:
        seed: The seed that shuffled the groups.
        fold: Fold number, 0 to k − 1.
        train: Positions used for training.
        val: Positions used to pick the checkpoint; carved from the
            training folds, empty when no validation part was asked for.
        test: Positions scored, the held-out fold.
    """

    seed: int
    fold: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def cross_validation_groups(manifest: pd.DataFrame) -> pd.Series:
    """Return the group key of every manifest row.

    The splits pipeline's ``split_group`` is used where present: the patient,
    else the volume, else the slice, with groups that share an identical
    slice merged. Without that column the key is ``patient_id``, else
    ``volume_id``, else ``slice_id``.

    Raises:
        ValueError: The manifest has neither ``split_group`` nor ``slice_id``.
    """
    if "split_group" in manifest.columns and manifest["split_group"].notna().all():
        return manifest["split_group"].astype(str)
    if "slice_id" not in manifest.columns:
        raise ValueError(
            f"cannot group rows without split_group or slice_id columns; the manifest has {sorted(manifest.columns)}"
        )
    keys = manifest["slice_id"].astype("object")
    for column in ("volume_id", "patient_id"):
        if column in manifest.columns:
            keys = manifest[column].astype("object").where(manifest[column].notna(), keys)
    return keys.astype(str)


def grouped_folds(groups: Sequence[str], n_folds: int, seed: int, val_fraction: float = 0.15) -> list[Fold]:
    """Split rows into ``n_folds`` group-disjoint folds, shuffled by ``seed``.

    Each fold in turn is the test part. From the other folds a validation
    part of about ``val_fraction`` of their groups is drawn (whole groups,
    with ``sklearn.model_selection.GroupShuffleSplit``) and the rest trains.
    ``GroupKFold(shuffle=True)`` shuffles the groups with ``seed`` before
    dealing them to folds, so the partition changes with the seed, and every
    row is in exactly one test fold per seed (checked before returning).

    Args:
        groups: One group key per labeled row.
        n_folds: Number of folds k, at least 2.
        seed: Seed of the group shuffle and of the validation draw.
        val_fraction: Share of the training folds' groups held out for
            validation, in [0, 1); 0 gives an empty validation part.

    Returns:
        The k folds, ordered by fold number.

    Raises:
        ValueError: ``n_folds`` < 2, there are fewer groups than folds,
            ``val_fraction`` is out of range, or the training folds of a
            fold have a single group to share between train and val.
    """
    groups = np.asarray([str(group) for group in groups])
    n_groups = len(np.unique(groups))
    if n_folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {n_folds}")
    if n_groups < n_folds:
        raise ValueError(
            f"cannot make {n_folds} group-disjoint folds from {n_groups} groups "
            f"({len(groups)} labeled rows); lower the number of folds to at most {n_groups} or add labeled patients"
        )
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")

    folds = []
    splitter = GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for fold, (rest, test) in enumerate(splitter.split(np.zeros(len(groups)), groups=groups)):
        train, val = rest, np.zeros(0, dtype=np.int64)
        if val_fraction > 0:
            rest_groups = groups[rest]
            if len(np.unique(rest_groups)) < 2:
                raise ValueError(
                    f"fold {fold} (seed {seed}) has one training group, so no validation group can be "
                    "carved from it; use more folds, more groups or val_fraction 0"
                )
            carve = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed * 1009 + fold)
            train_positions, val_positions = next(carve.split(np.zeros(len(rest)), groups=rest_groups))
            train, val = rest[train_positions], rest[val_positions]
        folds.append(Fold(seed, fold, np.sort(train), np.sort(val), np.sort(test)))
    check_folds_disjoint(folds, groups)
    return folds


def check_folds_disjoint(folds: Sequence[Fold], groups: Sequence[str]) -> None:
    """Check that no group spans two parts of a fold, and that each row is tested once per seed.

    Raises:
        FoldLeakageError: Naming the fold and a shared group.
    """
    groups = np.asarray([str(group) for group in groups], dtype=object)
    tested: dict[int, list[np.ndarray]] = {}
    for fold in folds:
        parts = {name: set(groups[getattr(fold, name)].tolist()) for name in ("train", "val", "test")}
        for first, second in (("train", "val"), ("train", "test"), ("val", "test")):
            shared = parts[first] & parts[second]
            if shared:
                raise FoldLeakageError(
                    f"seed {fold.seed}, fold {fold.fold}: group(s) {sorted(shared)[:3]} occur in both "
                    f"{first} and {second}"
                )
        tested.setdefault(fold.seed, []).append(fold.test)
    for seed, tests in tested.items():
        counts = np.bincount(np.concatenate(tests), minlength=len(groups))
        if counts.max() > 1:
            raise FoldLeakageError(f"seed {seed}: row {int(np.argmax(counts))} is in more than one test fold")


def fit_intensity_threshold(images: np.ndarray, masks: np.ndarray, n_bins: int = 256) -> float:
    """Find the intensity threshold that maximises the mean per-slice lesion Dice on training slices.

    The prediction is ``image >= threshold`` (lesion, any class, is denser
    than aerated lung, so brighter in a lung window). Candidates are the
    ``n_bins + 1`` values ``k / n_bins`` for k = 0 … n_bins; the last one
    predicts nothing. Per-slice Dice follows the project's empty-mask rules
    (1 when reference and prediction are both empty).

    Args:
        images: (n, H, W) intensities in [0, 1].
        masks: (n, H, W) class maps; every class above 0 is lesion.
        n_bins: Number of threshold steps; a power of two keeps
            ``image * n_bins`` exact, so fitting and applying agree.

    Returns:
        The threshold with the best training Dice (the lowest one on ties).

    Raises:
        ValueError: Shapes differ or no slice is given.
    """
    images = np.asarray(images, dtype=np.float32)
    lesion = np.asarray(masks) > 0
    if images.shape != lesion.shape or images.ndim != 3 or len(images) == 0:
        raise ValueError(f"need (n, H, W) images and masks of one shape with n > 0, got {images.shape} and {lesion.shape}")
    n_slices = len(images)
    bins = np.clip(np.floor(images * n_bins), 0, n_bins - 1).astype(np.int64)
    flat = (np.arange(n_slices)[:, None, None] * n_bins + bins).ravel()
    lesion_hist = np.bincount(flat, weights=lesion.ravel(), minlength=n_slices * n_bins).reshape(n_slices, n_bins)
    all_hist = np.bincount(flat, minlength=n_slices * n_bins).reshape(n_slices, n_bins)

    # Pixels at or above threshold k: reverse cumulative sums, plus k = n_bins (nothing predicted).
    def at_or_above(hist: np.ndarray) -> np.ndarray:
        return np.concatenate([np.cumsum(hist[:, ::-1], axis=1)[:, ::-1], np.zeros((n_slices, 1))], axis=1)

    true_positive = at_or_above(lesion_hist)
    predicted = at_or_above(all_hist)
    reference = lesion.reshape(n_slices, -1).sum(axis=1, keepdims=True)
    denominator = predicted + reference
    dice = np.where(denominator > 0, 2 * true_positive / np.maximum(denominator, 1), 1.0)
    best = int(np.argmax(dice.mean(axis=0)))
    return best / n_bins


def apply_intensity_threshold(images: np.ndarray, threshold: float) -> np.ndarray:
    """Return the binary lesion map ``image >= threshold`` as uint8 (n, H, W)."""
    return (np.asarray(images, dtype=np.float32) >= threshold).astype(np.uint8)


def score_lesion_masks(predictions: np.ndarray, references: np.ndarray) -> dict[str, float]:
    """Return the lesion (any class) Dice of a test fold: per-slice mean and pooled.

    Multi-class maps are merged to lesion against background first, the same
    way for every method, by ``per_slice_lesion_metrics``.
    """
    per_slice = per_slice_lesion_metrics(predictions, references)
    summary = summarise_segmentation(per_slice, predictions, references, multiclass=False)
    return {"dice_mean": summary["dice_mean"], "dice_pooled": summary["dice_pooled"], "n_slices": summary["n_slices"]}


def summarise_cross_validation(runs: pd.DataFrame) -> pd.DataFrame:
    """Aggregate per-run scores into one row per dataset and method.

    Scores are first averaged over the folds of each seed. The table gives
    the mean and the sample standard deviation (ddof 1, 0 for a single seed)
    of those per-seed averages, so the std measures the spread between
    seeds, not between folds.

    Args:
        runs: One row per completed run with ``dataset``, ``method``,
            ``seed``, ``fold``, ``dice_mean``, ``dice_pooled`` and
            ``cpu_seconds`` (the CPU time of that run).

    Returns:
        Columns ``SUMMARY_COLUMNS``; ``cpu_seconds`` is the mean per run.
    """
    if runs.empty:
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    per_seed = (
        runs.groupby(["dataset", "method", "seed"], sort=False)
        .agg(dice_mean=("dice_mean", "mean"), dice_pooled=("dice_pooled", "mean"), folds=("fold", "nunique"))
        .reset_index()
    )

    def seed_std(values: pd.Series) -> float:
        return float(values.std(ddof=1)) if len(values) > 1 else 0.0

    table = (
        per_seed.groupby(["dataset", "method"], sort=False)
        .agg(
            folds=("folds", "max"),
            seeds=("seed", "nunique"),
            dice_mean_std=("dice_mean", seed_std),
            dice_pooled_std=("dice_pooled", seed_std),
            dice_mean=("dice_mean", "mean"),
            dice_pooled=("dice_pooled", "mean"),
        )
        .reset_index()
    )
    counts = runs.groupby(["dataset", "method"], sort=False).agg(
        runs=("fold", "size"), cpu_seconds=("cpu_seconds", "mean")
    )
    table = table.join(counts, on=["dataset", "method"])
    return table[list(SUMMARY_COLUMNS)].reset_index(drop=True)


def methods_beating_reference(table: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Compare every method of each dataset with ``reference`` against the spread between seeds.

    A method beats the reference when its mean per-slice Dice exceeds the
    reference's by more than the larger of the two seed standard deviations
    (``dice_mean_std``).

    Returns:
        One row per dataset and other method: ``dataset``, ``method``,
        ``gain`` (Dice difference), ``spread`` and ``beats`` (bool). Empty
        for a dataset without a ``reference`` row.
    """
    rows = []
    for dataset, part in table.groupby("dataset", sort=False):
        base = part[part["method"] == reference]
        if base.empty:
            continue
        base_score, base_std = float(base["dice_mean"].iloc[0]), float(base["dice_mean_std"].iloc[0])
        for row in part[part["method"] != reference].itertuples():
            gain = float(row.dice_mean) - base_score
            spread = max(float(row.dice_mean_std), base_std)
            rows.append({"dataset": dataset, "method": row.method, "gain": gain, "spread": spread, "beats": gain > spread})
    return pd.DataFrame(rows, columns=["dataset", "method", "gain", "spread", "beats"])
