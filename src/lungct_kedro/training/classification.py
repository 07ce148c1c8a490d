"""Few-shot slice classification: label budgets, preprocessing and training.

Two trained methods run through the shared training loop (``train_iterations``):

* ``supervised``: cross-entropy on the labeled budget only;
* ``mean_teacher``: Mean Teacher (A. Tarvainen and H. Valpola, "Mean teachers
  are better role models: weight-averaged consistency targets improve
  semi-supervised deep learning results", NeurIPS 2017). A teacher network
  is the exponential moving average of the student's weights, and a
  consistency loss pulls the student's softmax output towards the
  teacher's on the same slices under different augmentation and noise,
  including the unlabeled pool.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from lungct_kedro.datasets.slice_store import SliceStore
from lungct_kedro.models.classification import build_classifier, freeze_classifier_encoder, load_encoder_state
from lungct_kedro.training.classification_metrics import classification_scores, confusion_matrix
from lungct_kedro.training.data import endless_store_batches, random_rotate_flip, read_slices
from lungct_kedro.training.device import seed_everything, select_device
from lungct_kedro.training.loop import TrainingResult, train_iterations

logger = logging.getLogger(__name__)

TRAINED_METHODS = ("supervised", "mean_teacher")
BUDGET_KINDS = ("total", "per_class")


# ---------- label budget ----------


def parse_budget(budget: Mapping[str, Any]) -> tuple[str, int]:
    """Read a budget ``{"total": n}`` or ``{"per_class": k}`` as (kind, count).

    A key whose value is null counts as absent, so an environment can switch
    the kind with ``{total: null, per_class: 5}``.

    Raises:
        ValueError: Not exactly one of the two keys, or a count below 1.
    """
    unknown = set(budget) - set(BUDGET_KINDS)
    keys = [key for key in BUDGET_KINDS if budget.get(key) is not None]
    if len(keys) != 1 or unknown:
        raise ValueError(
            f"a label budget needs exactly one of {BUDGET_KINDS} set (the other null), got {dict(budget)}"
        )
    count = int(budget[keys[0]])
    if count < 1:
        raise ValueError(f"label budget {keys[0]} must be at least 1, got {count}")
    return keys[0], count


def budget_name(budget: Mapping[str, Any]) -> str:
    """Name a budget for tables, such as ``total=27`` or ``per_class=5``."""
    kind, count = parse_budget(budget)
    return f"{kind}={count}"


def allocate_budget(available: Mapping[str, int], budget: Mapping[str, Any]) -> dict[str, int]:
    """Split a label budget over classes.

    ``per_class`` takes k slices of every class. ``total`` gives every class
    one slice, then shares the rest in proportion to the training slices
    each class has beyond that one (largest remainder, ties to the earlier
    class), so the draw stays stratified.

    Args:
        available: Class → labeled training slices, in class order.
        budget: ``{"total": n}`` or ``{"per_class": k}``.

    Returns:
        Class → slices to draw.

    Raises:
        ValueError: A class has no training slice, or the budget requests
            more slices than a class (or all classes) has, or a total budget
            is smaller than the number of classes.
    """
    empty = [name for name, count in available.items() if count == 0]
    if empty:
        raise ValueError(
            f"classes {empty} have no labeled slice in the train split, so no budget can include them; "
            "remove them from classification.classes, choose another label_column, or change the splits"
        )
    kind, count = parse_budget(budget)
    if kind == "per_class":
        short = {name: n for name, n in available.items() if n < count}
        if short:
            raise ValueError(f"per_class budget {count} exceeds the labeled train slices of classes {short}")
        return {name: count for name in available}

    n_classes, n_available = len(available), sum(available.values())
    if count < n_classes:
        raise ValueError(f"total budget {count} is smaller than the {n_classes} classes; every class needs a slice")
    if count > n_available:
        raise ValueError(f"total budget {count} exceeds the {n_available} labeled train slices")
    spare = {name: n - 1 for name, n in available.items()}
    extra = count - n_classes
    n_spare = sum(spare.values())
    shares = {name: extra * n / n_spare if n_spare else 0.0 for name, n in spare.items()}
    allocation = {name: 1 + math.floor(share) for name, share in shares.items()}
    by_remainder = sorted(spare, key=lambda name: -(shares[name] - math.floor(shares[name])))
    for name in by_remainder[: count - sum(allocation.values())]:
        allocation[name] += 1
    return allocation


def draw_label_budget(
    slices: pd.DataFrame, classes: Sequence[str], budget: Mapping[str, Any], seed: int
) -> pd.DataFrame:
    """Draw a stratified labeled budget from the train split.

    Only rows with ``split == "train"`` and a label in ``classes`` are
    candidates. The draw depends only on ``seed`` and the candidate
    ``slice_id`` values, not on row order.

    Args:
        slices: Columns ``slice_id``, ``split`` and ``label`` (null when
            unlabeled).
        classes: Class names, in the order of the model outputs.
        budget: ``{"total": n}`` or ``{"per_class": k}``.
        seed: Seed of the draw.

    Returns:
        The drawn rows of ``slices``, sorted by class then ``slice_id``.

    Raises:
        ValueError: See ``allocate_budget``.
    """
    candidates = slices[(slices["split"] == "train") & slices["label"].isin(list(classes))]
    candidates = candidates.sort_values("slice_id", kind="stable")
    available = {name: int((candidates["label"] == name).sum()) for name in classes}
    allocation = allocate_budget(available, budget)
    rng = np.random.default_rng(seed)
    drawn = []
    for name in classes:
        members = candidates[candidates["label"] == name]
        chosen = rng.choice(len(members), size=allocation[name], replace=False)
        drawn.append(members.iloc[np.sort(chosen)])
    return pd.concat(drawn).reset_index(drop=True)


def unlabeled_pool(slices: pd.DataFrame, budget_rows: pd.DataFrame) -> pd.DataFrame:
    """Return the train-split rows outside the budget, labeled or not."""
    train = slices[slices["split"] == "train"]
    return train[~train["slice_id"].isin(budget_rows["slice_id"])].reset_index(drop=True)


# ---------- preprocessing ----------


@dataclass(frozen=True)
class Preprocessing:
    """Settings that turn store slices into network inputs.

    Attributes:
        input_size: Side of the network input in pixels.
        in_channels: 1 (grayscale) or 3 (grayscale copied to three channels).
        mean: Normalisation mean, one value per input channel.
        std: Normalisation standard deviation, one value per input channel.
        crop_padding: Reflection padding in pixels before the random crop.
        rotate_degrees: Training rotations are drawn from ±rotate_degrees.
        flip_probability: Chance of a flip, per axis.
    """

    input_size: int
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int
    rotate_degrees: float
    flip_probability: float


def normalisation_statistics(
    mean: Sequence[float], std: Sequence[float], in_channels: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Fit per-channel statistics to the number of input channels.

    Three-channel statistics (such as the RGB ones a model was trained
    with) are averaged over channels for one-channel input, which is what
    they give for a gray image whose three channels are equal.

    Raises:
        ValueError: ``in_channels`` is not 1 or 3, the lists have an
            unusable length, or a standard deviation is not positive.
    """
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
    mean, std = [float(v) for v in mean], [float(v) for v in std]
    if len(mean) != len(std) or len(mean) not in (1, 3):
        raise ValueError(f"normalisation mean and std need 1 or 3 values each, got {mean} and {std}")
    if min(std) <= 0:
        raise ValueError(f"normalisation std must be positive, got {std}")
    if in_channels == 1:
        return (float(np.mean(mean)),), (float(np.mean(std)),)
    if len(mean) == 1:
        return tuple(mean * 3), tuple(std * 3)
    return tuple(mean), tuple(std)


def build_preprocessing(params: Mapping[str, Any], store_size: int) -> Preprocessing:
    """Read the ``classification`` parameters into a ``Preprocessing``.

    ``input_size: null`` means the store's slice size.
    """
    model = params["model"]
    augmentation = params["augmentation"]
    in_channels = int(model.get("in_channels", 1))
    mean, std = normalisation_statistics(
        params["normalisation"]["mean"], params["normalisation"]["std"], in_channels
    )
    input_size = params.get("input_size") or store_size
    return Preprocessing(
        input_size=int(input_size),
        in_channels=in_channels,
        mean=mean,
        std=std,
        crop_padding=int(augmentation["crop_padding"]),
        rotate_degrees=float(augmentation["rotate_degrees"]),
        flip_probability=float(augmentation["flip_probability"]),
    )


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def _normalise(images: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    if prep.in_channels == 3:
        images = images.expand(-1, 3, -1, -1)
    mean = torch.tensor(prep.mean, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(prep.std, device=images.device).view(1, -1, 1, 1)
    return (images - mean) / std


def crop_slices(images: torch.Tensor, size: int, padding: int, offsets: torch.Tensor) -> torch.Tensor:
    """Pad ``images`` by reflection and cut one ``size`` square per slice.

    Args:
        images: (n, c, size, size).
        size: Side of the crop.
        padding: Reflection padding on every side, in pixels.
        offsets: (n, 2) integer (row, column) corners in the padded image,
            each in [0, 2·padding]; ``padding`` on both gives the centre crop.
    """
    if padding == 0:
        return images
    padded = F.pad(images, (padding, padding, padding, padding), mode="reflect")
    crops = [padded[i, :, r : r + size, c : c + size] for i, (r, c) in enumerate(offsets.tolist())]
    return torch.stack(crops)


def prepare_for_evaluation(images: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """Resize, take the centre crop and normalise (no randomness)."""
    images = _resize(images, prep.input_size)
    centre = torch.full((len(images), 2), prep.crop_padding, dtype=torch.int64)
    return _normalise(crop_slices(images, prep.input_size, prep.crop_padding, centre), prep)


def augment_for_training(
    images: torch.Tensor, prep: Preprocessing, generator: torch.Generator, noise_std: float = 0.0
) -> torch.Tensor:
    """Resize, rotate, flip, random-crop, add Gaussian noise and normalise.

    Args:
        images: (n, 1, H, W) slices in [0, 1].
        prep: Sizes and augmentation settings.
        generator: CPU generator for every random draw.
        noise_std: Standard deviation of additive noise on the [0, 1]
            intensity scale (0 for none).
    """
    images = _resize(images, prep.input_size)
    images = random_rotate_flip({"image": images}, prep.rotate_degrees, prep.flip_probability, generator)["image"]
    offsets = torch.randint(0, 2 * prep.crop_padding + 1, (len(images), 2), generator=generator)
    images = crop_slices(images, prep.input_size, prep.crop_padding, offsets)
    if noise_std > 0:
        images = images + noise_std * torch.randn(images.shape, generator=generator).to(images.device)
    return _normalise(images, prep)


# ---------- batches and prediction ----------


def endless_labeled_batches(
    store: SliceStore, rows: Sequence[int], labels: Sequence[int], batch_size: int, generator: torch.Generator
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield shuffled ``{"image": (n, 1, H, W), "label": (n,)}`` batches forever.

    Same passes as ``endless_store_batches``: reshuffled each pass, the last
    incomplete batch dropped unless the rows fill less than one batch.
    """
    rows = np.asarray(rows, dtype=np.int64)
    labels = torch.tensor(np.asarray(labels, dtype=np.int64))
    if len(rows) == 0:
        raise ValueError("no labeled slices to train on")
    per_pass = max(len(rows) // batch_size, 1)
    while True:
        permutation = torch.randperm(len(rows), generator=generator)
        for start in range(0, per_pass * batch_size, batch_size):
            chosen = permutation[start : start + batch_size]
            yield {"image": read_slices(store, rows[chosen.numpy()])["image"], "label": labels[chosen]}


def _with_unlabeled(
    labeled: Iterator[dict[str, torch.Tensor]], unlabeled: Iterator[dict[str, torch.Tensor]]
) -> Iterator[dict[str, torch.Tensor]]:
    for batch in labeled:
        yield {**batch, "unlabeled": next(unlabeled)["image"]}


@torch.no_grad()
def predict_classes(
    model: torch.nn.Module,
    store: SliceStore,
    rows: Sequence[int],
    prep: Preprocessing,
    device: torch.device,
    batch_size: int = 32,
) -> np.ndarray:
    """Return the predicted class index of each store row (int64 array)."""
    model.eval()
    rows = np.asarray(rows, dtype=np.int64)
    outputs = []
    for start in range(0, len(rows), batch_size):
        images = read_slices(store, rows[start : start + batch_size])["image"].to(device)
        # NOTE: the CUDA autocast branch has not run in the tests, which have no GPU.
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            logits = model(prepare_for_evaluation(images, prep))
        outputs.append(logits.argmax(dim=1).cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros(0, dtype=np.int64)


# ---------- Mean Teacher ----------


def sigmoid_rampup(iteration: float, rampup_iterations: float) -> float:
    """Return the consistency weight factor ``exp(-5·(1 − t)²)``, t = iteration / rampup_iterations.

    The factor rises from exp(−5) ≈ 0.0067 at t = 0 to 1 at t ≥ 1, the
    schedule of Tarvainen and Valpola (2017). ``rampup_iterations`` ≤ 0
    means no ramp-up (always 1).
    """
    if rampup_iterations <= 0:
        return 1.0
    progress = min(max(iteration / rampup_iterations, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - progress) ** 2))


@torch.no_grad()
def update_teacher(teacher: torch.nn.Module, student: torch.nn.Module, alpha: float, step: int) -> float:
    """Move the teacher towards the student: ``teacher = a·teacher + (1 − a)·student``.

    ``a = min(1 − 1/(step + 1), alpha)``: early on, when the student changes
    fast, the teacher follows it closely, as in the reference implementation
    of Mean Teacher. Floating-point buffers (batch-norm running statistics)
    are averaged the same way; integer buffers (batch counts) are copied.

    Args:
        teacher: The exponential-moving-average network, changed in place.
        student: The network trained by gradient descent, same architecture.
        alpha: The EMA decay in [0, 1).
        step: Optimiser steps taken so far (1 after the first step).

    Returns:
        The decay ``a`` that was applied.

    Raises:
        ValueError: ``alpha`` is outside [0, 1).
    """
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"teacher EMA decay alpha must lie in [0, 1), got {alpha}")
    decay = min(1.0 - 1.0 / (step + 1), alpha)
    for teacher_value, student_value in zip(teacher.parameters(), student.parameters()):
        teacher_value.mul_(decay).add_(student_value.detach(), alpha=1.0 - decay)
    for teacher_buffer, student_buffer in zip(teacher.buffers(), student.buffers()):
        if teacher_buffer.is_floating_point():
            teacher_buffer.mul_(decay).add_(student_buffer, alpha=1.0 - decay)
        else:
            teacher_buffer.copy_(student_buffer)
    return decay


class MeanTeacherPair(torch.nn.Module):
    """A student and its EMA teacher trained as one module.

    Passing the pair to ``train_iterations`` makes its best-state snapshot
    hold both networks. ``forward`` runs the student; the teacher's
    parameters take no gradient.
    """

    def __init__(self, student: torch.nn.Module) -> None:
        super().__init__()
        self.student = student
        self.teacher = copy.deepcopy(student)
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return the student's logits."""
        return self.student(images)


# ---------- training ----------


def build_optimizer(parameters: Iterator[torch.nn.Parameter], training: Mapping[str, Any]) -> torch.optim.Optimizer:
    """Build SGD (with momentum) or Adam from the ``training`` parameters.

    Raises:
        ValueError: ``optimizer`` is neither ``sgd`` nor ``adam``.
    """
    name = training.get("optimizer", "sgd")
    learning_rate = float(training["learning_rate"])
    weight_decay = float(training.get("weight_decay", 0.0))
    if name == "sgd":
        return torch.optim.SGD(
            parameters, lr=learning_rate, momentum=float(training.get("momentum", 0.9)), weight_decay=weight_decay
        )
    if name == "adam":
        return torch.optim.Adam(parameters, lr=learning_rate, weight_decay=weight_decay)
    raise ValueError(f"classification optimizer {name!r} is not supported; use sgd or adam")


def _build_scheduler(optimizer: torch.optim.Optimizer, training: Mapping[str, Any], iterations: int):
    schedule = training.get("lr_schedule", "constant")
    if schedule == "constant":
        return None
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=iterations)
    raise ValueError(f"classification lr_schedule {schedule!r} is not supported; use constant or cosine")


@dataclass
class ClassifierRun:
    """A trained classifier and how it was chosen.

    Attributes:
        model: The network to evaluate (the teacher for Mean Teacher unless
            ``mean_teacher.evaluate`` is ``student``), holding the selected state.
        result: The training loop's result.
        selected_iteration: Iteration of the state in ``model``.
        selection: ``best_val`` or ``last``.
        val_score: Monitored validation score of the selected state, or None.
    """

    model: torch.nn.Module
    result: TrainingResult
    selected_iteration: int
    selection: str
    val_score: float | None


def train_classifier(
    store: SliceStore,
    labeled_rows: Sequence[int],
    labels: Sequence[int],
    pool_rows: Sequence[int],
    val_rows: Sequence[int],
    val_labels: Sequence[int],
    method: str,
    params: Mapping[str, Any],
    seed: int,
    select_on_val: bool,
    init_encoder_state: Mapping[str, torch.Tensor] | None = None,
    freeze_encoder: bool = False,
) -> ClassifierRun:
    """Train one classifier on a labeled budget (and, for Mean Teacher, the pool).

    Args:
        store: The slice store.
        labeled_rows: Store rows of the labeled budget.
        labels: Class index of each labeled row.
        pool_rows: Store rows of the unlabeled pool (used by Mean Teacher).
        val_rows: Store rows of labeled validation slices (may be empty).
        val_labels: Their class indices.
        method: ``supervised`` or ``mean_teacher``.
        params: The ``classification`` parameters.
        seed: Seed of initialisation, batch order and augmentation.
        select_on_val: Keep the state with the best validation score
            (``training.monitor``); otherwise keep the final state.
        init_encoder_state: Optional encoder ``state_dict`` (for example a
            pre-trained one) loaded into ``classifier.encoder`` before
            training; None keeps the random initialisation.
        freeze_encoder: Train the head only (linear probing): the encoder
            takes no gradient and keeps its batch-norm statistics.

    Raises:
        ValueError: Unknown ``method``, or invalid settings.
    """
    if method not in TRAINED_METHODS:
        raise ValueError(f"classification method {method!r} is not trainable; use one of {TRAINED_METHODS}")
    training = params["training"]
    classes = list(params["classes"])
    generator = seed_everything(seed)
    device = select_device(params.get("device", "auto"))
    prep = build_preprocessing(params, store.image_size)
    iterations = int(training["iterations"])
    if method == "mean_teacher" and params["mean_teacher"].get("iterations"):
        iterations = int(params["mean_teacher"]["iterations"])

    network = build_classifier(params["model"], len(classes), prep.input_size, prep.in_channels)
    if init_encoder_state is not None:
        n_loaded = load_encoder_state(network, init_encoder_state)
        logger.info("Initialised the classifier encoder from %d pre-trained tensors", n_loaded)
    if freeze_encoder:
        freeze_classifier_encoder(network)
    batches: Iterator[dict[str, torch.Tensor]] = endless_labeled_batches(
        store, labeled_rows, labels, int(training["batch_size"]), generator
    )

    if method == "supervised":
        model: torch.nn.Module = network.to(device)

        def evaluated() -> torch.nn.Module:
            return model

        def loss_fn(classifier: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            inputs = augment_for_training(batch["image"], prep, generator)
            return F.cross_entropy(classifier(inputs), batch["label"])

    else:
        teacher_params = params["mean_teacher"]
        model = MeanTeacherPair(network).to(device)
        alpha = float(teacher_params["ema_decay"])
        max_weight = float(teacher_params["consistency_weight"])
        rampup = float(teacher_params["rampup_iterations"])
        noise_std = float(teacher_params["input_noise_std"])
        evaluate_teacher = teacher_params.get("evaluate", "teacher") == "teacher"
        if len(pool_rows):
            unlabeled = endless_store_batches(store, pool_rows, int(teacher_params["unlabeled_batch_size"]), generator)
            batches = _with_unlabeled(batches, unlabeled)
        else:
            logger.warning("Mean Teacher: the unlabeled pool is empty, so consistency uses the labeled slices only")
        # The loop steps the optimiser after loss_fn returns, so the teacher catches up on that step
        # at the next loss_fn call, before validation, or after training.
        state = {"steps": 0, "pending": False}

        def catch_up() -> None:
            if state["pending"]:
                state["steps"] += 1
                update_teacher(model.teacher, model.student, alpha, state["steps"])
                state["pending"] = False

        def evaluated() -> torch.nn.Module:
            catch_up()
            return model.teacher if evaluate_teacher else model.student

        def loss_fn(pair: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            catch_up()
            n_labeled = len(batch["label"])
            images = torch.cat([batch["image"], batch["unlabeled"]]) if "unlabeled" in batch else batch["image"]
            student_logits = pair.student(augment_for_training(images, prep, generator, noise_std))
            with torch.no_grad():
                teacher_logits = pair.teacher(augment_for_training(images, prep, generator, noise_std))
            classification = F.cross_entropy(student_logits[:n_labeled], batch["label"])
            consistency = F.mse_loss(
                torch.softmax(student_logits.float(), dim=1), torch.softmax(teacher_logits.float(), dim=1)
            )
            weight = max_weight * sigmoid_rampup(state["steps"], rampup)
            state["pending"] = True
            return classification + weight * consistency

    if freeze_encoder:
        step_loss = loss_fn
        encoders = [module.encoder for module in model.modules() if hasattr(module, "encoder")]

        def loss_fn(network: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            # The loop calls model.train() before every step; frozen encoders go back to eval mode.
            for encoder in encoders:
                encoder.eval()
            return step_loss(network, batch)

    optimizer = build_optimizer((p for p in model.parameters() if p.requires_grad), training)
    scheduler = _build_scheduler(optimizer, training, iterations)
    monitor = str(training["monitor"])

    def validate(_: torch.nn.Module) -> dict[str, float]:
        predictions = predict_classes(evaluated(), store, val_rows, prep, device)
        scores = classification_scores(confusion_matrix(val_labels, predictions, len(classes)), classes)
        return {"val_accuracy": scores["accuracy"], "val_balanced_accuracy": scores["balanced_accuracy"]}

    logger.info(
        "Training %s %s on %d labeled and %d pool slices for %d iterations on %s (seed %d)",
        params["model"].get("architecture", "resnet18"),
        method,
        len(labeled_rows),
        len(pool_rows) if method == "mean_teacher" else 0,
        iterations,
        device,
        seed,
    )
    result = train_iterations(
        model,
        batches,
        loss_fn,
        optimizer,
        scheduler,
        iterations,
        device,
        validate=validate if len(val_rows) else None,
        monitor=monitor,
        validate_every=int(training["validate_every"]),
        log_every=int(training["log_every"]),
        description=f"classification {method}",
    )
    evaluated()  # applies the teacher update of the last step
    if select_on_val and len(val_rows):
        model.load_state_dict(result.best_state)
        selection, selected_iteration, val_score = "best_val", result.best_iteration, result.best_score
    else:
        selection, selected_iteration = "last", iterations
        last = [point[monitor] for point in result.history if monitor in point]
        val_score = float(last[-1]) if last and result.history[-1]["iteration"] == iterations else None
    return ClassifierRun(evaluated(), result, selected_iteration, selection, val_score)
