"""Nodes that assign patient-level splits and prove that nothing leaks."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
UNLABELED_STRATUM = "<none>"


class SplitLeakageError(RuntimeError):
    """Raised when a patient, volume or identical slice lands in two splits."""


def assign_splits(manifest: pd.DataFrame, params: Mapping[str, Any]) -> pd.DataFrame:
    """Assign every slice to train, val or test, keeping groups together.

    A group is a patient where the patient is known, else a volume, else a
    single slice (logged as a warning, because neighbouring slices of one
    scan may then leak across splits). Groups that share an identical slice
    (same ``content_hash``) are merged first. Groups are stratified by the
    label in ``stratify_by`` (the most common value within each group) and
    dealt out so that each split's share of every stratum follows the ratios.

    Args:
        manifest: The slice manifest from ingestion.
        params: ``ratios`` (train, val, test shares summing to 1), ``seed``
            and ``stratify_by`` (a manifest column, or null).

    Returns:
        The manifest with ``split_group`` and ``split`` columns added.

    Raises:
        ValueError: The ratios are invalid or ``stratify_by`` is not a column.
    """
    ratios = _check_ratios(params["ratios"])
    stratify_by = params.get("stratify_by")
    if stratify_by and stratify_by not in manifest.columns:
        raise ValueError(
            f"splits.stratify_by is '{stratify_by}', which is not a manifest column; "
            f"use one of {sorted(manifest.columns)} or null"
        )

    result = manifest.copy()
    result["split_group"] = _group_keys(result)
    strata = _group_strata(result, stratify_by)

    rng = np.random.default_rng(int(params["seed"]))
    ordered: list[str] = []
    # Rare strata are dealt first, so their few groups go to train before val and test.
    sizes = strata.value_counts()
    for stratum in sorted(sizes.index, key=lambda name: (sizes[name], name)):
        members = sorted(strata.index[strata == stratum])
        ordered.extend(members[i] for i in rng.permutation(len(members)))

    group_split = dict(zip(ordered, _deal(len(ordered), ratios)))
    result["split"] = result["split_group"].map(group_split).astype("string")
    counts = result.groupby("split")["slice_id"].count().reindex(SPLITS, fill_value=0)
    logger.info(
        "Split %d groups: train %d, val %d, test %d slices",
        len(ordered),
        counts["train"],
        counts["val"],
        counts["test"],
    )
    for split in SPLITS:
        if counts[split] == 0:
            logger.warning("Split '%s' is empty; add more patients or change splits.ratios", split)
    return result


def check_split_leakage(split_manifest: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Fail if any patient, volume or identical slice lands in two splits.

    Returns:
        The manifest unchanged, and a summary with slice and patient counts
        per split.

    Raises:
        SplitLeakageError: Naming the first offending identifiers.
    """
    for column in ("patient_id", "volume_id", "content_hash"):
        known = split_manifest.dropna(subset=[column])
        n_splits = known.groupby(column)["split"].nunique()
        leaked = n_splits[n_splits > 1].index.tolist()
        if leaked:
            raise SplitLeakageError(
                f"{len(leaked)} value(s) of {column} occur in more than one split, "
                f"for example {leaked[:3]}; rerun the splits pipeline instead of editing splits by hand"
            )

    summary: dict[str, Any] = {}
    for split in SPLITS:
        part = split_manifest[split_manifest["split"] == split]
        summary[split] = {
            "slices": int(len(part)),
            "groups": int(part["split_group"].nunique()),
            "patients": int(part["patient_id"].nunique()),
            "slices_with_mask": int(part["has_mask"].sum()),
        }
    return split_manifest, summary


def _check_ratios(raw: Any) -> tuple[float, float, float]:
    ratios = tuple(float(value) for value in raw)
    if len(ratios) != 3 or min(ratios) < 0 or not np.isclose(sum(ratios), 1.0):
        raise ValueError(f"splits.ratios must be three non-negative shares (train, val, test) summing to 1, got {raw}")
    return ratios  # type: ignore[return-value]


def _group_keys(manifest: pd.DataFrame) -> pd.Series:
    keys = manifest["patient_id"].fillna(manifest["volume_id"])
    by_slice = keys.isna()
    if by_slice.any():
        sources = sorted(manifest.loc[by_slice, "source"].unique())
        logger.warning(
            "%d slices from %s have no patient or volume; each is its own split group, so "
            "neighbouring slices of one scan may fall into different splits",
            int(by_slice.sum()),
            sources,
        )
    keys = keys.fillna(manifest["slice_id"]).astype(str)
    return _merge_identical_slices(keys, manifest["content_hash"].astype(str))


def _merge_identical_slices(keys: pd.Series, hashes: pd.Series) -> pd.Series:
    """Union groups that share a content hash, so duplicates stay in one split."""
    parent: dict[str, str] = {key: key for key in keys.unique()}

    def find(key: str) -> str:
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for members in pd.Series(keys.values, index=hashes.values).groupby(level=0):
        groups = sorted(set(members[1]))
        for other in groups[1:]:
            root_a, root_b = find(groups[0]), find(other)
            if root_a != root_b:
                parent[max(root_a, root_b)] = min(root_a, root_b)
    return keys.map(find)


def _group_strata(manifest: pd.DataFrame, stratify_by: str | None) -> pd.Series:
    if not stratify_by:
        return pd.Series(UNLABELED_STRATUM, index=manifest["split_group"].unique())
    labels = manifest[stratify_by].astype("string").fillna(UNLABELED_STRATUM)
    return labels.groupby(manifest["split_group"]).agg(lambda values: values.value_counts().index[0])


def _deal(n_groups: int, ratios: tuple[float, float, float]) -> list[str]:
    """Deal split names to ``n_groups`` ordered groups, following the ratios.

    Each group goes to the split that is furthest below its target count so
    far, so every run of consecutive groups (one stratum) is shared out in
    proportion.
    """
    assigned = np.zeros(3)
    dealt: list[str] = []
    for position in range(n_groups):
        deficit = np.asarray(ratios) * (position + 1) - assigned
        choice = int(np.argmax(deficit))
        assigned[choice] += 1
        dealt.append(SPLITS[choice])
    return dealt
