"""Grouped cross-validation folds, the intensity-threshold floor and the seed summaries."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lungct_kedro.training.cross_validation import (
    SUMMARY_COLUMNS,
    Fold,
    FoldLeakageError,
    apply_intensity_threshold,
    check_folds_disjoint,
    cross_validation_groups,
    fit_intensity_threshold,
    grouped_folds,
    methods_beating_reference,
    summarise_cross_validation,
)


def uneven_groups() -> list[str]:
    """13 groups of 1 to 6 rows, in interleaved order like slices of several scans."""
    sizes = [1, 6, 2, 3, 1, 5, 2, 4, 1, 3, 2, 1, 4]
    groups = [f"patient-{index}" for index, size in enumerate(sizes) for _ in range(size)]
    return list(np.random.default_rng(3).permutation(groups))


@pytest.mark.parametrize("n_folds", [2, 3, 5])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_folds_never_share_a_group(n_folds, seed):
    groups = np.asarray(uneven_groups())
    folds = grouped_folds(groups, n_folds, seed, val_fraction=0.2)
    assert len(folds) == n_folds
    for fold in folds:
        train, val, test = set(groups[fold.train]), set(groups[fold.val]), set(groups[fold.test])
        assert not train & test
        assert not train & val
        assert not val & test
        assert len(train) > 0
        assert len(val) > 0
        assert len(test) > 0
        # Every row of the fold is in exactly one part.
        assert sorted(np.concatenate([fold.train, fold.val, fold.test])) == list(range(len(groups)))


def test_every_row_tested_once_per_seed():
    groups = uneven_groups()
    folds = grouped_folds(groups, 4, seed=2)
    tested = np.concatenate([fold.test for fold in folds])
    assert sorted(tested) == list(range(len(groups)))


def test_seeds_reshuffle_folds():
    groups = uneven_groups()
    first = [tuple(fold.test) for fold in grouped_folds(groups, 3, seed=0)]
    again = [tuple(fold.test) for fold in grouped_folds(groups, 3, seed=0)]
    other = [tuple(fold.test) for fold in grouped_folds(groups, 3, seed=1)]
    assert first == again
    assert set(first) != set(other)


def test_slice_groups_when_no_patient():
    manifest = pd.DataFrame(
        {
            "slice_id": ["s0", "s1", "s2", "s3"],
            "patient_id": [None, None, "p1", "p1"],
            "volume_id": [None, "v1", "v2", None],
        }
    )
    assert cross_validation_groups(manifest).tolist() == ["s0", "v1", "p1", "p1"]
    with_split_group = manifest.assign(split_group=["g0", "g0", "g1", "g1"])
    assert cross_validation_groups(with_split_group).tolist() == ["g0", "g0", "g1", "g1"]


def test_fewer_groups_than_folds_raises():
    with pytest.raises(ValueError, match="cannot make 5 group-disjoint folds from 3 groups"):
        grouped_folds(["a", "a", "b", "c", "c"], 5, seed=0)


def test_single_training_group_raises_with_val():
    with pytest.raises(ValueError, match="one training group"):
        grouped_folds(["a", "a", "b"], 2, seed=0, val_fraction=0.2)
    folds = grouped_folds(["a", "a", "b"], 2, seed=0, val_fraction=0.0)
    assert all(len(fold.val) == 0 for fold in folds)


def test_leak_check_names_shared_group():
    groups = ["a", "a", "b", "c"]
    leaking = Fold(seed=0, fold=0, train=np.array([0, 2]), val=np.array([], dtype=int), test=np.array([1, 3]))
    with pytest.raises(FoldLeakageError, match=r"\['a'\].*train and test"):
        check_folds_disjoint([leaking], groups)


def test_threshold_floor_finds_bright_lesion():
    # Lesions at 0.75 on lung at 0.1 and a body rim at 0.5: the best cut lies in (0.5, 0.75].
    images = np.full((3, 16, 16), 0.1, dtype=np.float32)
    images[:, :2, :] = 0.5
    masks = np.zeros((3, 16, 16), dtype=np.uint8)
    masks[0, 4:8, 4:8] = 1
    masks[1, 6:12, 5:9] = 2
    images[masks > 0] = 0.75
    threshold = fit_intensity_threshold(images, masks)
    assert 0.5 < threshold <= 0.75
    predicted = apply_intensity_threshold(images, threshold)
    assert np.array_equal(predicted, (masks > 0).astype(np.uint8))


def test_threshold_floor_trades_off_dice():
    # One slice, hand-computed: 4 lesion pixels at 0.5 and 4 background pixels at 0.75.
    # A cut at or below 0.5 predicts all 8 (Dice 2·4 / (8 + 4) = 0.667); above 0.5 predicts
    # background only (Dice 0); above 0.75 predicts nothing (Dice 0). The lowest best cut wins.
    images = np.zeros((1, 4, 4), dtype=np.float32)
    masks = np.zeros((1, 4, 4), dtype=np.uint8)
    images[0, 0, :] = 0.5
    masks[0, 0, :] = 1
    images[0, 1, :] = 0.75
    threshold = fit_intensity_threshold(images, masks, n_bins=4)
    assert threshold == pytest.approx(0.25)
    assert apply_intensity_threshold(images, threshold).sum() == 8


def test_threshold_floor_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same shape|one shape"):
        fit_intensity_threshold(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))


def make_runs(scores: dict[str, list[list[float]]]) -> pd.DataFrame:
    """Runs from scores[method][seed][fold], with pooled Dice = per-slice Dice + 0.1."""
    rows = []
    for method, by_seed in scores.items():
        for seed, by_fold in enumerate(by_seed):
            for fold, score in enumerate(by_fold):
                rows.append(
                    {
                        "dataset": "toy",
                        "method": method,
                        "seed": seed,
                        "fold": fold,
                        "dice_mean": score,
                        "dice_pooled": score + 0.1,
                        "cpu_seconds": 10.0 + fold,
                    }
                )
    return pd.DataFrame(rows)


def test_summary_std_is_across_seed_averages():
    # Seed averages 0.5 and 0.7: mean 0.6, sample std 0.1414; the fold spread does not enter.
    runs = make_runs({"plain": [[0.4, 0.6], [0.6, 0.8]]})
    table = summarise_cross_validation(runs)
    assert list(table.columns) == list(SUMMARY_COLUMNS)
    row = table.iloc[0]
    assert row["folds"] == 2
    assert row["seeds"] == 2
    assert row["runs"] == 4
    assert row["dice_mean"] == pytest.approx(0.6)
    assert row["dice_mean_std"] == pytest.approx(np.sqrt(0.02))
    assert row["dice_pooled"] == pytest.approx(0.7)
    assert row["dice_pooled_std"] == pytest.approx(np.sqrt(0.02))
    assert row["cpu_seconds"] == pytest.approx(10.5)


def test_verdict_needs_gain_above_spread():
    runs = make_runs(
        {
            "plain": [[0.50, 0.50], [0.52, 0.52]],  # mean 0.51, std 0.0141
            "better": [[0.60, 0.60], [0.61, 0.61]],  # gain 0.095 > spread
            "noisy": [[0.40, 0.40], [0.70, 0.70]],  # gain 0.04 < std 0.21
        }
    )
    verdict = methods_beating_reference(summarise_cross_validation(runs), "plain").set_index("method")
    assert bool(verdict.loc["better", "beats"])
    assert not bool(verdict.loc["noisy", "beats"])
    assert verdict.loc["better", "gain"] == pytest.approx(0.095)
    assert verdict.loc["noisy", "spread"] == pytest.approx(np.sqrt(0.045))
