"""Segmentation methods in the pipeline: slice selection and runs on the phantom and the real sample."""

from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch

from lungct_kedro.pipelines.segmentation.nodes import select_auxiliary_slices
from tests.pipelines.conftest import TINY_PARAMS


def manifest() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "slice_id": [f"s{i}" for i in range(8)],
            "store_index": list(range(8)),
            "source": ["seg", "seg", "seg", "plain", "plain", "dicom", "dicom", "seg"],
            "has_mask": [True, True, True, False, False, False, False, False],
            "split": ["train", "train", "val", "train", "test", "train", "train", "train"],
            "severity": ["severe", None, "ordinary", None, "critical", "ordinary", None, None],
        }
    )


def params(**sections) -> dict:
    base = {"method": "supervised", "multitask": {"enabled": False}, "mean_teacher": {}}
    base.update(sections)
    return base


def test_auxiliary_empty_for_supervised():
    selected = select_auxiliary_slices(manifest(), params())
    assert selected.empty
    assert list(selected.columns) == ["slice_id", "store_index", "source", "has_mask", "unlabeled", "class_label", "class_index"]


def test_unlabeled_slices_from_training_split_only():
    selected = select_auxiliary_slices(manifest(), params(method="mean_teacher"))
    assert selected["slice_id"].tolist() == ["s3", "s5", "s6", "s7"]
    assert selected["unlabeled"].all()
    assert (selected["class_index"] == -1).all()


def test_unlabeled_sources_filter():
    selected = select_auxiliary_slices(manifest(), params(method="mean_teacher", mean_teacher={"unlabeled_sources": ["dicom"]}))
    assert selected["slice_id"].tolist() == ["s5", "s6"]


def test_unknown_unlabeled_source_named():
    with pytest.raises(ValueError, match="unlabeled_sources names unknown sources \\['mosmed'\\]"):
        select_auxiliary_slices(manifest(), params(method="mean_teacher", mean_teacher={"unlabeled_sources": ["mosmed"]}))


def test_no_unlabeled_slices_logged(caplog):
    labeled_only = manifest().assign(has_mask=True)
    with caplog.at_level(logging.INFO, logger="lungct_kedro.pipelines.segmentation.nodes"):
        selected = select_auxiliary_slices(labeled_only, params(method="mean_teacher"))
    assert selected.empty
    assert "consistency loss uses the labeled training slices only" in caplog.text


def test_class_targets_from_label_column():
    multitask = {"enabled": True, "label_column": "severity", "classes": ["ordinary", "severe", "critical"]}
    selected = select_auxiliary_slices(manifest(), params(method="mean_teacher", multitask=multitask))
    by_id = selected.set_index("slice_id")
    assert by_id.loc["s0", "class_index"] == 1  # labeled slice with a class
    assert not by_id.loc["s0", "unlabeled"]
    assert by_id.loc["s5", "class_index"] == 0  # unlabeled slice with a class
    assert by_id.loc["s5", "unlabeled"]
    assert by_id.loc["s3", "class_index"] == -1
    assert "s1" not in by_id.index  # labeled, no class: not auxiliary
    assert "s2" not in by_id.index  # validation
    assert "s4" not in by_id.index  # test


def test_missing_label_column_named():
    multitask = {"enabled": True, "label_column": "diagnosis", "classes": ["COVID-19", "CAP", "Normal"]}
    with pytest.raises(ValueError, match="label_column 'diagnosis' is not a manifest column"):
        select_auxiliary_slices(manifest(), params(multitask=multitask))


def test_label_values_outside_classes_get_no_class(caplog):
    multitask = {"enabled": True, "label_column": "severity", "classes": ["ordinary", "severe"]}
    with caplog.at_level(logging.WARNING):
        selected = select_auxiliary_slices(manifest().assign(split="train"), params(multitask=multitask))
    assert "critical" in caplog.text
    assert "s4" not in set(selected["slice_id"])  # its value, critical, is not a class
    assert selected.set_index("slice_id").loc["s2", "class_index"] == 0


def test_no_training_slice_with_class_named():
    multitask = {"enabled": True, "label_column": "severity", "classes": ["mild", "moderate"]}
    with pytest.raises(ValueError, match="no training slice has a value in manifest column 'severity'"):
        select_auxiliary_slices(manifest(), params(multitask=multitask))


@pytest.mark.slow
def test_phantom_methods_run(run_pipelines, kedro_project):
    run_pipelines(["ingestion", "splits"])
    data = kedro_project / "data"

    pretrained = copy.deepcopy(TINY_PARAMS)
    pretrained["segmentation"]["model"] = {"architecture": "flexible_unet_resnet18", "encoder_init": "pretrained"}
    with pytest.raises(Exception, match="kedro run --pipeline=pretraining") as error:
        run_pipelines(["segmentation"], params=pretrained)
    assert "pretrained_encoder.pt does not exist" in str(error.value)

    methods = copy.deepcopy(TINY_PARAMS)
    methods["segmentation"].update(
        {
            "method": "mean_teacher",
            "multitask": {"enabled": True},
            "inference": {"flip_tta": True, "postprocess": {"lung_mask": True, "min_component_pixels": 4}},
        }
    )
    methods["segmentation"]["model"] = {
        "architecture": "dynunet",
        "dynunet": {"filters": [8, 16, 32], "deep_supervision": True, "deep_supervision_levels": 1},
    }
    run_pipelines(["segmentation", "segmentation_inference"], params=methods)

    metrics = json.loads((data / "08_reporting" / "segmentation_metrics.json").read_text())
    assert metrics["method"] == "mean_teacher"
    assert metrics["architecture"] == "dynunet"
    assert metrics["multitask"] is True
    assert metrics["flip_tta"] is True
    assert metrics["postprocess"] == {"lung_mask": True, "min_component_pixels": 4}
    assert not np.isnan(metrics["dice_mean"])

    auxiliary = pd.read_parquet(data / "05_model_input" / "segmentation_auxiliary_slices.parquet")
    assert not auxiliary["unlabeled"].any()  # every phantom slice has a mask
    assert set(auxiliary["class_label"]) <= {"ordinary", "severe", "critical"}
    assert len(auxiliary) > 0

    checkpoint = torch.load(data / "06_models" / "segmentation_unet.pt", weights_only=True)
    assert checkpoint["mean_teacher_network"] == "teacher"
    assert checkpoint["multitask_classes"] == ["ordinary", "severe", "critical"]
    assert any(key.startswith("classifier.") for key in checkpoint["state_dict"])

    history = pd.read_csv(data / "08_reporting" / "segmentation_history.csv")
    for column in ("cpu_seconds", "val_dice_student", "loss_consistency", "loss_classification"):
        assert column in history.columns, column
    assert history["cpu_seconds"].is_monotonic_increasing

    inference = json.loads((data / "08_reporting" / "inference_metrics.json").read_text())
    assert inference["n_slices"] > 0


@pytest.mark.slow
def test_real_sample_mean_teacher_multitask(run_pipelines, kedro_project, shared_data_dir):
    run_params = copy.deepcopy(TINY_PARAMS)
    run_params["data_dir"] = str(shared_data_dir)
    run_params["segmentation"].update(
        {
            "method": "mean_teacher",
            "mean_teacher": {"unlabeled_sources": ["unlabeled", "covid_ct_md"]},
            "multitask": {"enabled": True, "label_column": "diagnosis", "classes": ["COVID-19", "CAP", "Normal"]},
        }
    )
    run_pipelines(["ingestion", "splits", "segmentation"], env="real", params=run_params)
    data = kedro_project / "data"

    auxiliary = pd.read_parquet(data / "05_model_input" / "segmentation_auxiliary_slices.parquet")
    split_manifest = pd.read_parquet(data / "05_model_input" / "split_manifest.parquet")
    train_without_mask = split_manifest[(split_manifest["split"] == "train") & ~split_manifest["has_mask"]]
    assert auxiliary["unlabeled"].sum() == len(train_without_mask)
    assert set(auxiliary.loc[auxiliary["unlabeled"], "source"]) == {"unlabeled", "covid_ct_md"}
    with_class = auxiliary[auxiliary["class_index"] >= 0]
    assert set(with_class["source"]) == {"covid_ct_md"}
    assert set(with_class["class_label"]) <= {"COVID-19", "CAP", "Normal"}

    metrics = json.loads((data / "08_reporting" / "segmentation_metrics.json").read_text())
    assert metrics["method"] == "mean_teacher"
    assert metrics["multitask"] is True
