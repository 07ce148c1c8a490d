"""Tests of the patient-level splits and the leakage check."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lungct_kedro.pipelines.splits.nodes import SplitLeakageError, assign_splits, check_split_leakage

PARAMS = {"ratios": [0.6, 0.2, 0.2], "seed": 3, "stratify_by": "severity"}


def make_manifest(n_patients: int = 20, slices_per_patient: int = 4) -> pd.DataFrame:
    rows = []
    grades = ["ordinary", "severe", "critical", None]
    for patient in range(n_patients):
        for index in range(slices_per_patient):
            rows.append(
                {
                    "slice_id": f"sl-{patient}-{index}",
                    "patient_id": f"pat-{patient}",
                    "volume_id": f"vol-{patient}",
                    "source": "phantom",
                    "content_hash": f"h-{patient}-{index}",
                    "has_mask": True,
                    "severity": grades[patient % 4],
                }
            )
    manifest = pd.DataFrame(rows)
    for column in ("slice_id", "patient_id", "volume_id", "source", "severity"):
        manifest[column] = manifest[column].astype("string")
    return manifest


def test_patients_never_share_splits():
    result = assign_splits(make_manifest(), PARAMS)
    assert (result.groupby("patient_id")["split"].nunique() == 1).all()


def test_ratios_followed_by_patient_count():
    result = assign_splits(make_manifest(n_patients=20), PARAMS)
    patients = result.drop_duplicates("patient_id")["split"].value_counts()
    assert patients["train"] == 12
    assert patients["val"] == 4
    assert patients["test"] == 4


def test_each_stratum_reaches_test():
    result = assign_splits(make_manifest(n_patients=40), PARAMS)
    test_grades = set(result.loc[result["split"] == "test", "severity"].fillna("none"))
    assert test_grades == {"ordinary", "severe", "critical", "none"}


def test_same_seed_same_assignment():
    first = assign_splits(make_manifest(), PARAMS)
    second = assign_splits(make_manifest(), PARAMS)
    assert first["split"].tolist() == second["split"].tolist()


def test_other_seed_other_assignment():
    first = assign_splits(make_manifest(), PARAMS)
    second = assign_splits(make_manifest(), {**PARAMS, "seed": 4})
    assert first["split"].tolist() != second["split"].tolist()


def test_identical_slices_stay_together():
    manifest = make_manifest()
    # Patient 0 and patient 13 share one identical slice, so they must share a split.
    manifest.loc[manifest["slice_id"] == "sl-13-2", "content_hash"] = "h-0-0"
    for seed in range(10):
        result = assign_splits(manifest, {**PARAMS, "seed": seed})
        splits = result.set_index("patient_id")["split"]
        assert splits["pat-0"].iloc[0] == splits["pat-13"].iloc[0]


def test_slices_without_patient_group_by_volume():
    manifest = make_manifest()
    manifest["patient_id"] = pd.NA
    result = assign_splits(manifest, PARAMS)
    assert (result.groupby("volume_id")["split"].nunique() == 1).all()


def test_slices_without_any_group_warn(caplog):
    manifest = make_manifest(n_patients=5)
    manifest["patient_id"] = pd.NA
    manifest["volume_id"] = pd.NA
    result = assign_splits(manifest, {**PARAMS, "stratify_by": None})
    assert result["split_group"].nunique() == len(manifest)
    assert "no patient or volume" in caplog.text


def test_leakage_check_passes_clean_split():
    result = assign_splits(make_manifest(), PARAMS)
    _, summary = check_split_leakage(result)
    assert sum(part["slices"] for part in summary.values()) == len(result)


@pytest.mark.parametrize("column", ["patient_id", "volume_id", "content_hash"])
def test_leakage_check_rejects_shared_values(column):
    result = assign_splits(make_manifest(), PARAMS)
    train_row = result.index[result["split"] == "train"][0]
    test_row = result.index[result["split"] == "test"][0]
    result.loc[test_row, column] = result.loc[train_row, column]
    with pytest.raises(SplitLeakageError, match=column):
        check_split_leakage(result)


@pytest.mark.parametrize("ratios", [[0.5, 0.5], [0.8, 0.3, 0.1], [1.2, -0.1, -0.1]])
def test_invalid_ratios_rejected(ratios):
    with pytest.raises(ValueError, match="ratios"):
        assign_splits(make_manifest(), {**PARAMS, "ratios": ratios})


def test_unknown_stratify_column_rejected():
    with pytest.raises(ValueError, match="stratify_by"):
        assign_splits(make_manifest(), {**PARAMS, "stratify_by": "diagnosis"})


def test_group_sizes_unchanged_by_split():
    manifest = make_manifest()
    result = assign_splits(manifest, PARAMS)
    assert np.array_equal(result["slice_id"].to_numpy(), manifest["slice_id"].to_numpy())
