"""Tests of the curation pipeline: quality table, selection rules, pairs and runs."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from lungct_kedro.datasets import SliceStore, SliceStoreDataset
from lungct_kedro.imaging.enhance import enhance_image
from lungct_kedro.imaging.quality import METRIC_NAMES, compute_quality_table
from lungct_kedro.pipelines.curation.nodes import (
    SUBSET_COLUMNS,
    compute_quality_metrics,
    make_enhanced_references,
    plot_curation_examples,
    plot_quality_histograms,
    select_low_quality,
)
from tests.pipelines.conftest import TINY_PARAMS

STEPS = [{"name": "exposure"}]


def make_quality(noise, contrast, slice_ids=None, variants=None) -> pd.DataFrame:
    """Build a quality table with the given noise and contrast, other metrics mid-range."""
    n_rows = len(noise)
    table = pd.DataFrame(
        {
            "slice_id": slice_ids or [f"s{i}" for i in range(n_rows)],
            "store_index": np.arange(n_rows),
            "variant": variants or ["clean"] * n_rows,
            "source": ["phantom"] * n_rows,
            "split": ["train"] * n_rows,
            "patient_id": [f"p{i}" for i in range(n_rows)],
        }
    )
    for name in METRIC_NAMES:
        table[name] = 0.5
    table["noise_sigma"] = np.asarray(noise, dtype=float)
    table["rms_contrast"] = np.asarray(contrast, dtype=float)
    table["lung_soft_tissue_cnr"] = np.nan
    return table


# ---------- select_low_quality ----------


def test_quantile_threshold_resolved_to_value():
    quality = make_quality([0.01, 0.02, 0.03, 0.04, 0.05], [0.3] * 5)
    params = {"rules": {"noise_sigma": {"above_quantile": 0.5}}}

    subset, summary = select_low_quality(quality, params)

    assert summary["thresholds"]["noise_sigma"]["threshold"] == pytest.approx(0.03)
    assert summary["thresholds"]["noise_sigma"]["quantile"] == 0.5
    assert summary["thresholds"]["noise_sigma"]["n_failed"] == 2
    assert sorted(subset["slice_id"]) == ["s3", "s4"]


def test_absolute_thresholds_and_failed_rules_text():
    quality = make_quality([0.01, 0.09, 0.09, 0.01], [0.3, 0.3, 0.05, 0.05])
    params = {"rules": {"noise_sigma": {"above": 0.05}, "rms_contrast": {"below": 0.1}}}

    subset, summary = select_low_quality(quality, params)
    text = dict(zip(subset["slice_id"], subset["failed_rules"]))
    counts = dict(zip(subset["slice_id"], subset["n_failed_rules"]))

    assert set(subset["slice_id"]) == {"s1", "s2", "s3"}
    assert text["s2"] == "noise_sigma,rms_contrast"
    assert text["s1"] == "noise_sigma"
    assert text["s3"] == "rms_contrast"
    assert counts["s2"] == 2
    assert summary["thresholds"]["rms_contrast"]["threshold"] == 0.1
    assert summary["thresholds"]["rms_contrast"]["quantile"] is None


def test_thresholds_are_strict():
    quality = make_quality([0.05, 0.06], [0.3, 0.3])

    subset, _ = select_low_quality(quality, {"rules": {"noise_sigma": {"above": 0.05}}})

    assert subset["slice_id"].tolist() == ["s1"]


def test_min_failed_rules_keeps_multiple_failures():
    quality = make_quality([0.01, 0.09, 0.09, 0.01], [0.3, 0.3, 0.05, 0.05])
    params = {
        "rules": {"noise_sigma": {"above": 0.05}, "rms_contrast": {"below": 0.1}},
        "min_failed_rules": 2,
    }

    subset, summary = select_low_quality(quality, params)

    assert subset["slice_id"].tolist() == ["s2"]
    assert summary["n_flagged"] == 1


def test_target_size_keeps_worst_first():
    # s0 fails both rules; s1..s4 fail only the noise rule, by growing margins.
    quality = make_quality([0.06, 0.07, 0.09, 0.08, 0.07], [0.05, 0.3, 0.3, 0.3, 0.3])
    params = {
        "rules": {"noise_sigma": {"above": 0.05}, "rms_contrast": {"below": 0.1}},
        "target_size": 3,
    }

    subset, summary = select_low_quality(quality, params)

    assert subset["slice_id"].tolist() == ["s0", "s2", "s3"]
    assert subset["pair_index"].tolist() == [0, 1, 2]
    assert summary["n_flagged"] == 5
    assert summary["n_selected"] == 3
    assert subset["severity"].iloc[1] > subset["severity"].iloc[2]


def test_ties_broken_by_slice_id_then_variant():
    quality = make_quality(
        [0.09, 0.09, 0.09], [0.3] * 3, slice_ids=["b", "a", "a"], variants=["clean", "lowq", "clean"]
    )

    subset, _ = select_low_quality(quality, {"rules": {"noise_sigma": {"above": 0.05}}, "target_size": 2})

    assert list(zip(subset["slice_id"], subset["variant"])) == [("a", "clean"), ("a", "lowq")]


def test_rule_with_other_name_and_null_rule():
    quality = make_quality([0.01, 0.09], [0.3, 0.3])
    quality["mean_exposure"] = [0.1, 0.5]
    params = {
        "rules": {
            "dark": {"metric": "mean_exposure", "below": 0.15},
            "noise_sigma": None,
        }
    }

    subset, summary = select_low_quality(quality, params)

    assert subset["failed_rules"].tolist() == ["dark"]
    assert subset["slice_id"].tolist() == ["s0"]
    assert "noise_sigma" not in summary["thresholds"]


def test_nan_metric_never_fails():
    quality = make_quality([0.01, 0.02], [0.3, 0.3])
    quality["lung_soft_tissue_cnr"] = [np.nan, 5.0]

    subset, summary = select_low_quality(quality, {"rules": {"lung_soft_tissue_cnr": {"below_quantile": 0.9}}})
    all_nan, nan_summary = select_low_quality(
        make_quality([0.01], [0.3]), {"rules": {"lung_soft_tissue_cnr": {"below_quantile": 0.5}}}
    )

    assert len(subset) == 0
    assert summary["thresholds"]["lung_soft_tissue_cnr"]["threshold"] == pytest.approx(5.0)
    assert len(all_nan) == 0
    assert nan_summary["thresholds"]["lung_soft_tissue_cnr"]["threshold"] is None


def test_subset_has_contract_columns():
    subset, _ = select_low_quality(make_quality([0.09], [0.3]), {"rules": {"noise_sigma": {"above": 0.05}}})

    for column in SUBSET_COLUMNS:
        assert column in subset.columns, column
    for name in METRIC_NAMES:
        assert name in subset.columns, name


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"sharpness": {"below": 0.1}}, "unknown metric 'sharpness'"),
        ({"noise_sigma": {}}, "no threshold"),
        ({"noise_sigma": {"above": 0.1, "above_quantile": 0.9}}, "exactly one"),
        ({"noise_sigma": {"above": 0.1, "below": 0.01}}, "exactly one"),
        ({"noise_sigma": {"above_quantile": 1.5}}, r"\[0, 1\]"),
        ({"noise_sigma": {"abov": 0.1}}, "unknown keys"),
        ({"noise_sigma": 0.1}, "mapping"),
    ],
)
def test_invalid_rules_raise(rules, message):
    with pytest.raises(ValueError, match=message):
        select_low_quality(make_quality([0.01], [0.3]), {"rules": rules})


def test_invalid_counts_raise():
    quality = make_quality([0.01], [0.3])
    rules = {"noise_sigma": {"above": 0.05}}

    with pytest.raises(ValueError, match="min_failed_rules"):
        select_low_quality(quality, {"rules": rules, "min_failed_rules": 0})
    with pytest.raises(ValueError, match="target_size"):
        select_low_quality(quality, {"rules": rules, "target_size": 0})


# ---------- compute_quality_metrics and make_enhanced_references ----------


def make_store(n_slices: int = 4, size: int = 32) -> SliceStore:
    rng = np.random.default_rng(11)
    image = rng.uniform(0.2, 0.8, size=(n_slices, size, size)).astype(np.float16)
    lowq = np.clip(image + rng.normal(0, 0.1, size=image.shape), 0, 1).astype(np.float16)
    hu = rng.integers(-900, 50, size=image.shape).astype(np.int16)
    return SliceStore(
        arrays={"image": image, "image_lowq": lowq, "hu": hu},
        attributes={"window_level_hu": -600.0, "window_width_hu": 1500.0, "image_size": size},
    )


def make_manifest(n_slices: int = 4) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "slice_id": [f"sl-{i}" for i in range(n_slices)],
            "store_index": np.arange(n_slices),
            "patient_id": [f"p{i // 2}" for i in range(n_slices)],
            "source": ["phantom"] * n_slices,
            "split": ["train", "train", "test", "test"][:n_slices],
            "has_hu": [True, False, True, True][:n_slices],
            "has_lowq": [True, False, True, False][:n_slices],
        }
    )


def test_quality_rows_for_clean_and_lowq():
    store = make_store()

    quality = compute_quality_metrics(store, make_manifest(), {"chunk_size": 3})
    lowq = quality[quality["variant"] == "lowq"]
    expected_lowq = compute_quality_table(np.asarray(store.arrays["image_lowq"][[0, 2]]))

    assert len(quality) == 6
    assert (quality["variant"] == "clean").sum() == 4
    assert lowq["slice_id"].tolist() == ["sl-0", "sl-2"]
    assert np.allclose(lowq["noise_sigma"], expected_lowq["noise_sigma"])
    assert quality.columns[:6].tolist() == ["slice_id", "store_index", "variant", "source", "split", "patient_id"]
    assert np.isnan(quality.loc[1, "lung_soft_tissue_cnr"])  # has_hu is False
    assert np.isfinite(quality.loc[0, "lung_soft_tissue_cnr"])


def test_quality_needs_lowq_array():
    store = make_store()
    store.arrays.pop("image_lowq")

    with pytest.raises(ValueError, match="image_lowq"):
        compute_quality_metrics(store, make_manifest(), {})


def test_pairs_use_variant_array_in_pair_order():
    store = make_store()
    subset = pd.DataFrame(
        {
            "slice_id": ["sl-2", "sl-0", "sl-1"],
            "store_index": [2, 0, 1],
            "variant": ["lowq", "clean", "lowq"],
            "pair_index": [1, 0, 2],
        }
    )

    pairs = make_enhanced_references(store, subset, {"enhancement": {"steps": STEPS}})
    hazy = pairs.arrays["image"]

    assert hazy.shape == (3, 32, 32)
    assert pairs.arrays["image_enhanced"].shape == (3, 32, 32)
    assert np.array_equal(hazy[0], store.arrays["image"][0].astype(np.float32))
    assert np.array_equal(hazy[1], store.arrays["image_lowq"][2].astype(np.float32))
    assert np.array_equal(hazy[2], store.arrays["image_lowq"][1].astype(np.float32))
    assert np.allclose(pairs.arrays["image_enhanced"][1], enhance_image(hazy[1], STEPS))
    assert pairs.attributes["slice_ids"] == ["sl-0", "sl-2", "sl-1"]
    assert pairs.attributes["variants"] == ["clean", "lowq", "lowq"]


def test_pairs_reject_gapped_pair_index():
    subset = pd.DataFrame({"slice_id": ["sl-0"], "store_index": [0], "variant": ["clean"], "pair_index": [3]})

    with pytest.raises(ValueError, match="pair_index"):
        make_enhanced_references(make_store(), subset, {})


def test_empty_subset_gives_empty_pairs_and_figures():
    store = make_store()
    quality = compute_quality_metrics(store, make_manifest(), {})
    params = {"rules": {"noise_sigma": {"above": 10.0}}, "figures": {"n_examples": 2}}
    subset, summary = select_low_quality(quality, params)

    pairs = make_enhanced_references(store, subset, params)
    histograms = plot_quality_histograms(quality, subset, summary, params)
    examples = plot_curation_examples(store, quality, subset, pairs, summary, params)

    assert len(subset) == 0
    assert pairs.arrays["image"].shape == (0, 32, 32)
    assert isinstance(histograms, Figure)
    assert isinstance(examples, Figure)


# ---------- pipeline runs ----------

CURATION_OVERRIDES = {"figures": {"n_examples": 2, "panel_size_in": 2.0}}


def check_outputs(project) -> dict:
    data = project / "data"
    paths = [
        data / "04_feature" / "quality_metrics.parquet",
        data / "05_model_input" / "dehazing_subset.parquet",
        data / "05_model_input" / "dehazing_pairs" / "image.npy",
        data / "05_model_input" / "dehazing_pairs" / "image_enhanced.npy",
        data / "08_reporting" / "curation_summary.json",
        data / "08_reporting" / "curation_metric_histograms.png",
        data / "08_reporting" / "curation_examples.png",
    ]
    for path in paths:
        assert path.is_file(), path
        assert path.stat().st_size > 0, path

    subset = pd.read_parquet(data / "05_model_input" / "dehazing_subset.parquet")
    pairs = SliceStoreDataset(str(data / "05_model_input" / "dehazing_pairs")).load()
    for column in SUBSET_COLUMNS:
        assert column in subset.columns, column
    assert len(pairs) == len(subset)
    assert subset["pair_index"].tolist() == list(range(len(subset)))
    assert pairs.attributes["slice_ids"] == subset["slice_id"].tolist()
    return json.loads((data / "08_reporting" / "curation_summary.json").read_text())


def test_curation_run_on_phantom(kedro_project, run_pipelines):
    params = copy.deepcopy(TINY_PARAMS)
    params["curation"] = CURATION_OVERRIDES

    run_pipelines(["ingestion", "splits", "curation"], params=params)
    summary = check_outputs(kedro_project)

    assert summary["n_candidates"] == 2 * 6 * 3  # every phantom slice and its low-dose twin
    assert summary["n_selected"] > 0
    assert summary["selected_by_variant"].get("lowq", 0) > 0


def test_curation_run_on_real_sample(kedro_project, run_pipelines, shared_data_dir):
    params = copy.deepcopy(TINY_PARAMS)
    params["curation"] = CURATION_OVERRIDES

    run_pipelines(["ingestion", "splits", "curation"], env="real", params={**params, "data_dir": str(shared_data_dir)})
    summary = check_outputs(kedro_project)

    assert summary["n_candidates"] > 0
    assert summary["candidates_by_variant"] == {"clean": summary["n_candidates"]}
    assert 0 < summary["n_selected"] < summary["n_candidates"]
    assert summary["thresholds"]["noise_sigma"]["quantile"] == 0.9
