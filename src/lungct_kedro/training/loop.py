"""One iteration-based training loop shared by every task.

The loop is independent of the task, because the caller passes a function that
computes the loss of one batch and a function that scores the model on the
validation set. It handles the device, mixed precision on CUDA, the learning
rate schedule, periodic validation, the best checkpoint, progress and logs.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

LossFunction = Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]
ValidationFunction = Callable[[torch.nn.Module], dict[str, float]]


@dataclass
class TrainingResult:
    """Outcome of a training run.

    Attributes:
        best_state: ``state_dict`` of the model at its best validation score
            (the final state when validation never ran).
        best_score: The best value of the monitored validation metric.
        best_iteration: Iteration at which ``best_state`` was taken.
        history: One dict per logged point: iteration, training loss,
            learning rate, images/s and any validation metrics.
    """

    best_state: dict[str, torch.Tensor]
    best_score: float
    best_iteration: int
    history: list[dict[str, Any]] = field(default_factory=list)


def train_iterations(
    model: torch.nn.Module,
    batches: Iterator[dict[str, torch.Tensor]],
    loss_fn: LossFunction,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    iterations: int,
    device: torch.device,
    validate: ValidationFunction | None = None,
    monitor: str = "val_dice",
    validate_every: int = 50,
    log_every: int = 10,
    description: str = "train",
) -> TrainingResult:
    """Train ``model`` for a fixed number of iterations.

    Uses automatic mixed precision (float16 autocast with gradient scaling)
    when ``device`` is CUDA, full precision on the CPU.

    Args:
        model: The network, already on ``device``.
        batches: An endless iterator of batches (dicts of CPU tensors).
        loss_fn: Computes the scalar loss of one batch already on ``device``.
        optimizer: Optimiser over the model's parameters.
        scheduler: Stepped once per iteration, or None.
        iterations: Number of optimiser steps.
        device: Where the model lives.
        validate: Returns validation metrics; a higher ``monitor`` value is
            better.
        monitor: The validation metric that selects the best checkpoint.
        validate_every: Iterations between validations (also run at the end).
        log_every: Iterations between log lines.
        description: Label of the progress bar and log lines.

    Raises:
        ValueError: ``iterations`` is not positive.
        FloatingPointError: The loss becomes NaN or infinite.
    """
    if iterations <= 0:
        raise ValueError(f"iterations must be positive, got {iterations}")
    # NOTE: the CUDA branch (autocast to float16 with gradient scaling) has not run in the test
    # suite, which has no GPU; only the CPU path is covered.
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    best_state = copy.deepcopy(model.state_dict())
    best_score, best_iteration = float("-inf"), 0
    history: list[dict[str, Any]] = []
    window_loss, window_images, window_started = 0.0, 0, time.perf_counter()

    # disable=None hides the bar when stderr is not a terminal (CI logs get the log lines instead).
    progress = tqdm(
        range(1, iterations + 1), desc=description, unit="it", mininterval=2.0, leave=False, disable=None
    )
    for iteration in progress:
        model.train()
        batch = {key: value.to(device, non_blocking=True) for key, value in next(batches).items()}
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            loss = loss_fn(model, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"{description}: loss is {loss.item()} at iteration {iteration}; lower the learning rate"
            )
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if scheduler is not None:
            scheduler.step()

        window_loss += loss.item()
        window_images += len(next(iter(batch.values())))
        progress.set_postfix(loss=f"{loss.item():.4f}", refresh=False)

        is_last = iteration == iterations
        if iteration % log_every == 0 or is_last or (validate and iteration % validate_every == 0):
            elapsed = time.perf_counter() - window_started
            steps = iteration - (history[-1]["iteration"] if history else 0)
            point: dict[str, Any] = {
                "iteration": iteration,
                "train_loss": window_loss / max(steps, 1),
                "learning_rate": optimizer.param_groups[0]["lr"],
                "images_per_second": window_images / max(elapsed, 1e-9),
            }
            if validate is not None and (iteration % validate_every == 0 or is_last):
                point.update(validate(model))
                score = point[monitor]
                if score > best_score:
                    best_score, best_iteration = score, iteration
                    best_state = copy.deepcopy(model.state_dict())
            history.append(point)
            logger.info(
                "%s it %d/%d: loss %.4f, %s%.1f images/s",
                description,
                iteration,
                iterations,
                point["train_loss"],
                f"{monitor} {point[monitor]:.4f}, " if monitor in point else "",
                point["images_per_second"],
            )
            window_loss, window_images, window_started = 0.0, 0, time.perf_counter()
    progress.close()

    if validate is None:
        best_state, best_iteration = copy.deepcopy(model.state_dict()), iterations
    logger.info("%s done: best %s %.4f at iteration %d", description, monitor, best_score, best_iteration)
    return TrainingResult(best_state, best_score, best_iteration, history)
