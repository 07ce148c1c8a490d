"""Threshold rules that flag low-quality slices from their quality metrics.

A rule compares one metric with one threshold. The threshold is either an
absolute value (``above`` / ``below``) or a quantile of the metric over all
candidates (``above_quantile`` / ``below_quantile``), resolved to an absolute
value before use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lungct_kedro.imaging.quality import METRIC_NAMES

#: Allowed keys of a rule: the threshold keys plus the optional ``metric``.
ABSOLUTE_KEYS = ("above", "below")
QUANTILE_KEYS = ("above_quantile", "below_quantile")


@dataclass(frozen=True)
class Rule:
    """One resolved rule: fail when ``metric`` is past ``threshold`` in ``direction``."""

    name: str
    metric: str
    direction: str  # "above" or "below"
    threshold: float  # absolute value; NaN when the metric has no finite value
    quantile: float | None  # the quantile it came from, or None for an absolute rule


def parse_rule(name: str, spec: Mapping[str, Any]) -> tuple[str, str, str, float]:
    """Check one rule and return its metric, direction, threshold kind and value.

    Args:
        name: Rule name; also the metric unless ``spec`` names ``metric``.
        spec: Exactly one of ``above``, ``below`` (absolute thresholds) or
            ``above_quantile``, ``below_quantile`` (a quantile in [0, 1]),
            and optionally ``metric``.

    Returns:
        ``(metric, direction, kind, value)`` with ``kind`` ``"absolute"`` or
        ``"quantile"``.

    Raises:
        ValueError: The metric is unknown, the rule has no threshold or more
            than one, has an unknown key, or a quantile is outside [0, 1].
    """
    if not isinstance(spec, Mapping):
        raise ValueError(
            f"curation rule {name!r} is {spec!r}; write it as a mapping such as {{above_quantile: 0.9}}"
        )
    metric = spec.get("metric", name)
    if metric not in METRIC_NAMES:
        raise ValueError(f"curation rule {name!r} uses unknown metric {metric!r}; use one of {list(METRIC_NAMES)}")
    unknown = set(spec) - {"metric", *ABSOLUTE_KEYS, *QUANTILE_KEYS}
    if unknown:
        raise ValueError(
            f"curation rule {name!r} has unknown keys {sorted(unknown)}; "
            f"use one of {list(ABSOLUTE_KEYS + QUANTILE_KEYS)} and optionally 'metric'"
        )
    thresholds = [key for key in (*ABSOLUTE_KEYS, *QUANTILE_KEYS) if key in spec]
    if len(thresholds) != 1:
        raise ValueError(
            f"curation rule {name!r} sets {thresholds or 'no threshold'}; give exactly one absolute "
            f"threshold ({' or '.join(ABSOLUTE_KEYS)}) or one quantile ({' or '.join(QUANTILE_KEYS)})"
        )
    key = thresholds[0]
    value = float(spec[key])
    if key in QUANTILE_KEYS:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"curation rule {name!r} has {key}: {value}; a quantile must lie in [0, 1]")
        return metric, key.removesuffix("_quantile"), "quantile", value
    return metric, key, "absolute", value


def resolve_rules(quality: pd.DataFrame, rules: Mapping[str, Mapping[str, Any] | None]) -> list[Rule]:
    """Turn the rule parameters into absolute thresholds over ``quality``.

    Quantiles ignore NaN metric values. A rule set to null is skipped, which
    lets an environment switch off a rule of ``conf/base``.

    Raises:
        ValueError: A rule is invalid (see ``parse_rule``).
    """
    resolved = []
    for name, spec in rules.items():
        if spec is None:
            continue
        metric, direction, kind, value = parse_rule(name, spec)
        if kind == "absolute":
            resolved.append(Rule(name, metric, direction, value, None))
            continue
        values = quality[metric].to_numpy(dtype=np.float64)
        finite = values[np.isfinite(values)]
        threshold = float(np.quantile(finite, value)) if len(finite) else float("nan")
        resolved.append(Rule(name, metric, direction, threshold, value))
    return resolved


def rules_from_summary(summary: Mapping[str, Any]) -> list[Rule]:
    """Rebuild the resolved rules from the ``thresholds`` recorded in the curation summary."""
    rules = []
    for name, entry in (summary.get("thresholds") or {}).items():
        threshold = float("nan") if entry["threshold"] is None else float(entry["threshold"])
        rules.append(Rule(name, entry["metric"], entry["direction"], threshold, entry.get("quantile")))
    return rules


def failed_rule_matrix(quality: pd.DataFrame, rules: list[Rule]) -> pd.DataFrame:
    """Return a boolean table, one column per rule, True where a candidate fails it.

    A candidate fails an ``above`` rule when its metric is strictly above the
    threshold and a ``below`` rule when strictly below. NaN metrics and NaN
    thresholds never fail.
    """
    failed = {}
    for rule in rules:
        values = quality[rule.metric].to_numpy(dtype=np.float64)
        with np.errstate(invalid="ignore"):
            failed[rule.name] = values > rule.threshold if rule.direction == "above" else values < rule.threshold
    return pd.DataFrame(failed, index=quality.index, dtype=bool)


def metric_scale(values: pd.Series) -> float:
    """Return the interquartile range of ``values``, else their standard deviation, else 1."""
    finite = values.to_numpy(dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if len(finite) == 0:
        return 1.0
    low, high = np.quantile(finite, [0.25, 0.75])
    if high - low > 0:
        return float(high - low)
    spread = float(finite.std())
    return spread if spread > 0 else 1.0


def severity_scores(quality: pd.DataFrame, rules: list[Rule], failed: pd.DataFrame) -> np.ndarray:
    """Sum, over the failed rules of each candidate, its distance past the threshold in IQR units.

    The distance is ``|metric - threshold| / scale`` with ``scale`` from
    ``metric_scale`` over all candidates, so metrics of different units add up.
    """
    severity = np.zeros(len(quality))
    for rule in rules:
        values = quality[rule.metric].to_numpy(dtype=np.float64)
        distance = np.abs(values - rule.threshold) / metric_scale(quality[rule.metric])
        severity += np.where(failed[rule.name].to_numpy(), distance, 0.0)
    return severity


def failed_rule_names(failed: pd.DataFrame) -> pd.Series:
    """Join the names of the failed rules of each row with commas, in rule order ('' for none)."""
    names = np.asarray(failed.columns, dtype=object)
    return pd.Series(
        [",".join(names[row]) for row in failed.to_numpy(dtype=bool)], index=failed.index, dtype=object
    )
