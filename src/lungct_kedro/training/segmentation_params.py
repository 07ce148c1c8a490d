"""Checks of the ``segmentation`` parameters: known keys and allowed values.

Only unknown and invalid keys are errors. A missing key takes the default
that the training code documents, so callers may pass partial parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lungct_kedro.models.segmentation import ARCHITECTURES

METHODS = ("supervised", "mean_teacher")
ENCODER_INITS = ("random", "pretrained")
TEACHER_CHOICES = ("teacher", "student")

#: Every key allowed under ``segmentation``; a nested dict lists the keys of a nested mapping,
#: None marks a leaf value.
KNOWN_KEYS: dict[str, Any] = {
    "target": None,
    "sources": None,
    "seed": None,
    "device": None,
    "method": None,
    "model": {
        "architecture": None,
        "channels": None,
        "num_res_units": None,
        "dropout": None,
        "swin_unetr": {"feature_size": None, "depths": None, "num_heads": None},
        "dynunet": {"filters": None, "deep_supervision": None, "deep_supervision_levels": None},
        "encoder_init": None,
    },
    "training": {
        "iterations": None,
        "batch_size": None,
        "learning_rate": None,
        "momentum": None,
        "weight_decay": None,
        "poly_power": None,
        "dice_weight": None,
        "ce_weight": None,
        "validate_every": None,
        "monitor": None,
        "log_every": None,
        "cpu_time_budget_s": None,
    },
    "augmentation": {"rotate_degrees": None, "flip_probability": None},
    "mean_teacher": {
        "ema_decay": None,
        "consistency_weight": None,
        "rampup_iterations": None,
        "unlabeled_batch_size": None,
        "perturbation": {"noise_std": None, "intensity_jitter": None, "flip": None},
        "unlabeled_sources": None,
        "evaluate": None,
    },
    "multitask": {
        "enabled": None,
        "label_column": None,
        "classes": None,
        "loss_weight": None,
        "class_only_batch_size": None,
    },
    "inference": {"flip_tta": None, "postprocess": {"lung_mask": None, "min_component_pixels": None}},
    "evaluation": {"batch_size": None, "overlay_slices": None},
}


def check_known_keys(params: Mapping[str, Any], known: Mapping[str, Any] = KNOWN_KEYS, path: str = "segmentation") -> None:
    """Raise on any key of ``params`` that ``known`` does not list, at any depth.

    Raises:
        ValueError: Naming the first unknown key with its full path and the
            keys allowed at that level.
    """
    for key, value in params.items():
        if key not in known:
            raise ValueError(
                f"unknown parameter {path}.{key}; the keys allowed under {path} are {sorted(known)}. "
                "Check its spelling in conf/<env>/parameters_segmentation.yml"
            )
        if isinstance(known[key], Mapping) and isinstance(value, Mapping):
            check_known_keys(value, known[key], f"{path}.{key}")


def _choice(value: Any, allowed: tuple[str, ...], name: str) -> None:
    if value not in allowed:
        raise ValueError(f"{name} is {value!r}; use one of {list(allowed)}")


def validate_segmentation_params(params: Mapping[str, Any]) -> None:
    """Check the ``segmentation`` parameters before anything is trained.

    Raises:
        ValueError: A key or a choice (method, architecture,
            ``encoder_init``, ``mean_teacher.evaluate``) is unknown. Or a
            pre-trained encoder is asked for without the ResNet-18
            architecture, multi-task has fewer than two classes, the EMA
            decay is outside [0, 1), the CPU-time budget is not positive, or
            an on/off switch (``flip_tta``, ``lung_mask``,
            ``multitask.enabled``) is not a boolean.
    """
    check_known_keys(params)
    _choice(params.get("method", "supervised"), METHODS, "segmentation.method")
    model = params.get("model") or {}
    architecture = model.get("architecture", "unet")
    _choice(architecture, ARCHITECTURES, "segmentation.model.architecture")
    encoder_init = model.get("encoder_init", "random")
    _choice(encoder_init, ENCODER_INITS, "segmentation.model.encoder_init")
    if encoder_init == "pretrained" and architecture != "flexible_unet_resnet18":
        raise ValueError(
            "segmentation.model.encoder_init: pretrained loads the pre-trained ResNet-18 and needs "
            f"segmentation.model.architecture: flexible_unet_resnet18, got {architecture!r}"
        )

    budget = (params.get("training") or {}).get("cpu_time_budget_s")
    if budget is not None and float(budget) <= 0:
        raise ValueError(f"segmentation.training.cpu_time_budget_s must be positive or null, got {budget}")

    teacher = params.get("mean_teacher") or {}
    _choice(teacher.get("evaluate", "teacher"), TEACHER_CHOICES, "segmentation.mean_teacher.evaluate")
    decay = float(teacher.get("ema_decay", 0.99))
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"segmentation.mean_teacher.ema_decay must lie in [0, 1), got {decay}")

    inference = params.get("inference") or {}
    postprocess = inference.get("postprocess") or {}
    switches = {
        "segmentation.inference.flip_tta": inference.get("flip_tta", False),
        "segmentation.inference.postprocess.lung_mask": postprocess.get("lung_mask", False),
        "segmentation.multitask.enabled": (params.get("multitask") or {}).get("enabled", False),
    }
    for name, value in switches.items():
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")

    multitask = params.get("multitask") or {}
    if multitask.get("enabled", False) and len(multitask.get("classes") or []) < 2:
        raise ValueError(
            f"segmentation.multitask.classes needs at least two classes, got {multitask.get('classes')}"
        )
