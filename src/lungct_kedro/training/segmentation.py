"""Segmentation training and prediction on top of the shared loop.

Every method runs through ``train_iterations`` with the same data, SGD
optimiser, polynomial learning-rate decay and validation:

* ``segmentation.method``: ``supervised`` (labeled slices only) or
  ``mean_teacher`` (adds a teacher network and a consistency loss on
  labeled and unlabeled slices, see ``training.mean_teacher``);
* ``segmentation.model.architecture``: any network of
  ``models.segmentation``; ``flexible_unet_resnet18`` can start from the
  pre-training pipeline's encoder;
* ``segmentation.multitask.enabled``: a classification head on the shared
  encoder, trained jointly on the slices that have a class.

The loss terms are described in ``training.segmentation_objective``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from lungct_kedro.datasets.slice_store import SliceStore
from lungct_kedro.models.multitask import MultiTaskSegmenter
from lungct_kedro.models.segmentation import (
    build_segmentation_model,
    check_image_size,
    load_resnet18_encoder_into_flexible_unet,
)
from lungct_kedro.training.data import endless_store_batches, read_slices, with_extra_batches
from lungct_kedro.training.device import seed_everything, select_device
from lungct_kedro.training.loop import TrainingResult, train_iterations
from lungct_kedro.training.mean_teacher import MeanTeacherPair, Perturbation
from lungct_kedro.training.metrics import per_slice_lesion_metrics, summarise_segmentation
from lungct_kedro.training.postprocess import postprocess_class_maps, postprocess_options
from lungct_kedro.training.segmentation_objective import (
    MeanTeacherSettings,
    SegmentationObjective,
    build_segmentation_criterion,
)
from lungct_kedro.training.segmentation_params import validate_segmentation_params
from lungct_kedro.training.tta import predict_probabilities

logger = logging.getLogger(__name__)

TARGETS = {"multiclass": 3, "binary": 2}

MEAN_TEACHER_DEFAULTS: dict[str, Any] = {
    "ema_decay": 0.99,
    "consistency_weight": 1.0,
    "rampup_iterations": 200,
    "unlabeled_batch_size": 6,
    "evaluate": "teacher",
}
MULTITASK_DEFAULTS: dict[str, Any] = {"enabled": False, "classes": [], "loss_weight": 0.3, "class_only_batch_size": 6}


def number_of_classes(target: str) -> int:
    """Return the output channels for ``target`` (``multiclass`` or ``binary``)."""
    if target not in TARGETS:
        raise ValueError(f"segmentation target {target!r} is not supported; use one of {sorted(TARGETS)}")
    return TARGETS[target]


def build_network(
    model_params: Mapping[str, Any], target: str, multitask_classes: Sequence[str] | None = None
) -> torch.nn.Module:
    """Build the segmentation network, with a classification head when ``multitask_classes`` is given."""
    network = build_segmentation_model(model_params, number_of_classes(target))
    if multitask_classes:
        return MultiTaskSegmenter(network, model_params, len(multitask_classes))
    return network


@torch.no_grad()
def predict_class_maps(
    model: torch.nn.Module,
    store: SliceStore,
    indices: Sequence[int],
    device: torch.device,
    batch_size: int = 16,
    flip_tta: bool = False,
    postprocess: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Predict a class map for each store row in ``indices``.

    Works for every network that ``train_segmentation`` returns: a
    multi-task network contributes its segmentation output only.

    Args:
        model: The network, on ``device``.
        store: The slice store.
        indices: Store rows to predict.
        device: Where the model lives.
        batch_size: Slices per forward pass.
        flip_tta: Average the softmax over the four flip views (see
            ``training.tta``); four times the compute.
        postprocess: ``segmentation.inference.postprocess``: ``lung_mask``
            and ``min_component_pixels`` (see ``training.postprocess``);
            None applies nothing.

    Returns:
        uint8 array of shape (len(indices), size, size).
    """
    model.eval()
    indices = np.asarray(indices, dtype=np.int64)
    outputs = []
    for start in range(0, len(indices), batch_size):
        images = read_slices(store, indices[start : start + batch_size])["image"]
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            probabilities = predict_probabilities(model, images.to(device), flip_tta)
        outputs.append(probabilities.argmax(dim=1).to(torch.uint8).cpu().numpy())
    size = store.image_size
    class_maps = np.concatenate(outputs) if outputs else np.zeros((0, size, size), dtype=np.uint8)
    options = postprocess_options(postprocess)
    if len(class_maps) and (options["lung_mask"] or options["min_component_pixels"] > 1):
        images = np.asarray(store.arrays["image"][indices], dtype=np.float32)
        class_maps = postprocess_class_maps(class_maps, images, options)
    return class_maps


def reference_class_maps(store: SliceStore, indices: Sequence[int], binary: bool) -> np.ndarray:
    """Read reference masks for ``indices``, merged to one lesion class if ``binary``."""
    masks = np.asarray(store.arrays["mask"][np.asarray(indices, dtype=np.int64)], dtype=np.uint8)
    return (masks > 0).astype(np.uint8) if binary else masks


def _load_encoder(network: torch.nn.Module, params: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> None:
    architecture = params["model"].get("architecture", "unet")
    if architecture != "flexible_unet_resnet18":
        raise ValueError(
            "pre-trained encoder weights need segmentation.model.architecture: flexible_unet_resnet18, "
            f"got {architecture!r}"
        )
    segmenter = network.segmenter if isinstance(network, MultiTaskSegmenter) else network
    report = load_resnet18_encoder_into_flexible_unet(segmenter, state)
    logger.info(
        "Loaded %d pre-trained encoder tensors into the U-Net (%d encoder tensors keep random values)",
        report["loaded"],
        len(report["not_initialised"]),
    )


def _check_class_targets(class_targets: Mapping[int, int] | None, classes: Sequence[str]) -> dict[int, int]:
    targets = {int(row): int(value) for row, value in (class_targets or {}).items()}
    if not targets:
        raise ValueError(
            "segmentation.multitask.enabled is true but no slice has a class target; pass class_targets "
            "or set segmentation.multitask.enabled: false"
        )
    invalid = sorted({value for value in targets.values() if not 0 <= value < len(classes)})
    if invalid:
        raise ValueError(f"class targets {invalid} are outside [0, {len(classes)}) for the classes {list(classes)}")
    return targets


def _training_batches(
    store: SliceStore,
    train_indices: Sequence[int],
    extra_rows: np.ndarray,
    params: Mapping[str, Any],
    class_targets: dict[int, int] | None,
    generator: torch.Generator,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield labeled batches, joined with batches of the rows without masks when there are any."""
    binary = params["target"] == "binary"
    batches = endless_store_batches(
        store, train_indices, int(params["training"]["batch_size"]), generator, binary, class_targets
    )
    if len(extra_rows) == 0:
        return batches
    if params.get("method", "supervised") == "mean_teacher":
        extra_size = int({**MEAN_TEACHER_DEFAULTS, **(params.get("mean_teacher") or {})}["unlabeled_batch_size"])
    else:
        extra_size = int({**MULTITASK_DEFAULTS, **(params.get("multitask") or {})}["class_only_batch_size"])
    extra = endless_store_batches(store, extra_rows, extra_size, generator, binary, class_targets)
    return with_extra_batches(batches, extra)


def _mean_teacher_settings(params: Mapping[str, Any]) -> MeanTeacherSettings:
    teacher = {**MEAN_TEACHER_DEFAULTS, **(params.get("mean_teacher") or {})}
    iterations = int(params["training"]["iterations"])
    return MeanTeacherSettings(
        ema_decay=float(teacher["ema_decay"]),
        consistency_weight=float(teacher["consistency_weight"]),
        rampup_share=float(teacher["rampup_iterations"]) / iterations,
        perturbation=Perturbation.from_params(teacher.get("perturbation")),
    )


def train_segmentation(
    store: SliceStore,
    train_indices: Sequence[int],
    val_indices: Sequence[int],
    params: Mapping[str, Any],
    init_encoder_state: Mapping[str, torch.Tensor] | None = None,
    unlabeled_indices: Sequence[int] | None = None,
    class_targets: Mapping[int, int] | None = None,
) -> tuple[torch.nn.Module, TrainingResult]:
    """Train a segmentation network with the method and options in ``params``.

    SGD with Nesterov momentum; the learning rate follows a polynomial
    decay, ``lr·(1 − p)^power``, where p is the share of training done
    (of ``training.iterations``, or of ``training.cpu_time_budget_s`` when
    that runs out first). Validation computes the per-slice mean and the
    pooled lesion Dice; the state with the best ``training.monitor`` metric
    is kept. For Mean Teacher the validated and returned network is the
    teacher (``mean_teacher.evaluate``), and the other network's
    ``val_dice`` is logged beside it.

    Args:
        store: The slice store with masks.
        train_indices: Store rows with masks to train on.
        val_indices: Store rows to validate on; empty for no validation,
            in which case the final state is kept.
        params: The ``segmentation`` parameters.
        init_encoder_state: ResNet-18 encoder weights (from the pretraining
            pipeline) to start from; needs the ``flexible_unet_resnet18``
            architecture.
        unlabeled_indices: Store rows without masks for the Mean Teacher
            consistency loss; ignored by supervised training.
        class_targets: Store row → class index (into ``multitask.classes``)
            for the multi-task head. Rows may be in ``train_indices`` or
            not; rows without a class are absent. Needed when
            ``multitask.enabled``, ignored otherwise.

    Raises:
        ValueError: Invalid parameters; ``init_encoder_state`` for another
            architecture; ``encoder_init: pretrained`` without
            ``init_encoder_state``; multi-task training without class
            targets; a slice size the architecture cannot take.

    Returns:
        The network holding its best state (for Mean Teacher, the teacher
        or the student as chosen), and the training result.
    """
    validate_segmentation_params(params)
    training = params["training"]
    method = params.get("method", "supervised")
    multitask = {**MULTITASK_DEFAULTS, **(params.get("multitask") or {})}
    classes = [str(name) for name in multitask["classes"]] if multitask["enabled"] else None
    generator = seed_everything(int(params["seed"]))
    device = select_device(params.get("device", "auto"))
    check_image_size(params["model"], store.image_size)

    network = build_network(params["model"], params["target"], classes)
    if init_encoder_state is not None:
        _load_encoder(network, params, init_encoder_state)
    elif params["model"].get("encoder_init", "random") == "pretrained":
        raise ValueError(
            "segmentation.model.encoder_init is pretrained but no encoder weights were given; "
            "run the pretraining pipeline first (kedro run --pipeline=pretraining)"
        )

    targets = _check_class_targets(class_targets, classes) if classes else None
    train_rows = np.asarray(train_indices, dtype=np.int64)
    extra = set()
    if method == "mean_teacher":
        extra |= {int(row) for row in (unlabeled_indices if unlabeled_indices is not None else [])}
    elif unlabeled_indices is not None and len(unlabeled_indices):
        logger.info("Supervised segmentation ignores the %d unlabeled slices", len(unlabeled_indices))
    if targets:
        extra |= set(targets)
    extra_rows = np.array(sorted(extra - set(train_rows.tolist())), dtype=np.int64)
    batches = _training_batches(store, train_rows, extra_rows, params, targets, generator)

    teacher_settings = _mean_teacher_settings(params) if method == "mean_teacher" else None
    model: torch.nn.Module = MeanTeacherPair(network) if teacher_settings else network
    model = model.to(device)
    evaluate_teacher = {**MEAN_TEACHER_DEFAULTS, **(params.get("mean_teacher") or {})}["evaluate"] == "teacher"

    def evaluated(candidate: torch.nn.Module, chosen: bool = True) -> torch.nn.Module:
        if teacher_settings is None:
            return candidate
        return candidate.teacher if evaluate_teacher == chosen else candidate.student

    objective = SegmentationObjective(
        criterion=build_segmentation_criterion(training["dice_weight"], training["ce_weight"]),
        generator=generator,
        rotate_degrees=float(params["augmentation"]["rotate_degrees"]),
        flip_probability=float(params["augmentation"]["flip_probability"]),
        class_weight=float(multitask["loss_weight"]) if classes else 0.0,
        mean_teacher=teacher_settings,
    )
    optimizer = torch.optim.SGD(
        [parameter for parameter in model.parameters() if parameter.requires_grad],
        lr=float(training["learning_rate"]),
        momentum=float(training["momentum"]),
        weight_decay=float(training["weight_decay"]),
        nesterov=True,
    )
    poly_power = float(training["poly_power"])
    binary = params["target"] == "binary"
    references = reference_class_maps(store, val_indices, binary) if len(val_indices) else None

    def dice_scores(network_to_score: torch.nn.Module) -> dict[str, float]:
        predictions = predict_class_maps(network_to_score, store, val_indices, device)
        summary = summarise_segmentation(
            per_slice_lesion_metrics(predictions, references), predictions, references, multiclass=False
        )
        return {"val_dice": summary["dice_mean"], "val_dice_pooled": summary["dice_pooled"]}

    def validate(candidate: torch.nn.Module) -> dict[str, float]:
        scores = dice_scores(evaluated(candidate))
        if teacher_settings is not None:
            other = "student" if evaluate_teacher else "teacher"
            scores[f"val_dice_{other}"] = dice_scores(evaluated(candidate, chosen=False))["val_dice"]
        return {**scores, **objective.take_means()}

    budget = training.get("cpu_time_budget_s")
    logger.info(
        "Training %s segmentation (%s, %s%s) on %d labeled and %d extra slices (%d validation), "
        "%d iterations at most%s, batch %d, on %s",
        params["target"],
        method,
        params["model"].get("architecture", "unet"),
        ", multi-task" if classes else "",
        len(train_rows),
        len(extra_rows),
        len(val_indices),
        int(training["iterations"]),
        f", {float(budget):.0f} CPU s budget" if budget is not None else "",
        int(training["batch_size"]),
        device,
    )
    result = train_iterations(
        model,
        batches,
        objective,
        optimizer,
        None,
        int(training["iterations"]),
        device,
        validate=validate if references is not None else None,
        monitor=str(training["monitor"]),
        validate_every=int(training["validate_every"]),
        log_every=int(training["log_every"]),
        description=f"segmentation {method}",
        cpu_time_budget_s=float(budget) if budget is not None else None,
        lr_schedule=lambda progress: (1.0 - progress) ** poly_power,
        after_step=objective.after_step,
    )
    model.load_state_dict(result.best_state)
    return evaluated(model), result


def segmentation_checkpoint(
    model: torch.nn.Module, result: TrainingResult, params: Mapping[str, Any], image_size: int
) -> dict[str, Any]:
    """Package a trained network with what ``load_segmentation_model`` needs to rebuild it.

    Returns:
        Plain values and tensors only, so the checkpoint loads with
        ``torch.load(weights_only=True)``.
    """
    multitask = {**MULTITASK_DEFAULTS, **(params.get("multitask") or {})}
    method = params.get("method", "supervised")
    return {
        "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
        "model": _plain(params["model"]),
        "target": params["target"],
        "method": method,
        "mean_teacher_network": (
            {**MEAN_TEACHER_DEFAULTS, **(params.get("mean_teacher") or {})}["evaluate"]
            if method == "mean_teacher"
            else None
        ),
        "multitask_classes": [str(name) for name in multitask["classes"]] if multitask["enabled"] else None,
        "multitask_label_column": multitask.get("label_column") if multitask["enabled"] else None,
        "image_size": int(image_size),
        "iterations": int(params["training"]["iterations"]),
        "iterations_run": int(result.iterations_run),
        "cpu_seconds": float(result.cpu_seconds),
        "stopped_by": result.stopped_by,
        "best_iteration": int(result.best_iteration),
        "monitor": str(params["training"]["monitor"]),
        "best_val_score": float(result.best_score),
    }


def _plain(value: Any) -> Any:
    """Convert nested mappings and sequences from the parameters into dicts and lists."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def load_segmentation_model(
    checkpoint: Mapping[str, Any], device_preference: str = "auto"
) -> tuple[torch.nn.Module, torch.device]:
    """Rebuild the network stored in ``checkpoint`` on the chosen device.

    Checkpoints of every architecture, method and of multi-task networks
    load; checkpoints written before methods existed (no ``method`` key)
    hold a plain network.
    """
    device = select_device(device_preference)
    model = build_network(checkpoint["model"], checkpoint["target"], checkpoint.get("multitask_classes"))
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device), device
