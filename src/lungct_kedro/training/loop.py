"""One iteration-based training loop shared by every task.

The loop is independent of the task, because the caller passes a function that
computes the loss of one batch and a function that scores the model on the
validation set. It handles the device, mixed precision on CUDA, the learning
rate schedule, an optional CPU-time budget, periodic validation, the best
checkpoint, progress and logs.
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
#: Called after every optimiser step with the iteration and the training progress in [0, 1].
StepCallback = Callable[[int, float], None]
#: Maps the training progress in [0, 1] to a factor of each parameter group's initial learning rate.
LearningRateSchedule = Callable[[float], float]

# The process's CPU seconds (all threads together); a module attribute so tests can replace the clock.
cpu_clock = time.process_time


@dataclass
class TrainingResult:
    """Outcome of a training run.

    Attributes:
        best_state: ``state_dict`` of the model at its best validation score
            (the final state when validation never ran).
        best_score: The best value of the monitored validation metric.
        best_iteration: Iteration at which ``best_state`` was taken.
        history: One dict per logged point: iteration, training loss,
            learning rate, images/s, CPU seconds used since training began
            and any validation metrics.
        iterations_run: Optimiser steps taken, fewer than requested when a
            CPU-time budget ran out first.
        cpu_seconds: CPU time of the process spent in training, validation
            included.
        stopped_by: ``iterations`` or ``cpu_time_budget``.
    """

    best_state: dict[str, torch.Tensor]
    best_score: float
    best_iteration: int
    history: list[dict[str, Any]] = field(default_factory=list)
    iterations_run: int = 0
    cpu_seconds: float = 0.0
    stopped_by: str = "iterations"


def training_progress(iteration: int, iterations: int, cpu_spent_s: float, cpu_time_budget_s: float | None) -> float:
    """Return the share of training done, in [0, 1].

    Without a budget it is ``iteration / iterations``. With a CPU-time budget
    it is the larger of that and ``cpu_spent_s / cpu_time_budget_s``, so
    schedules end where training ends, whichever limit is reached first.
    """
    progress = iteration / iterations
    if cpu_time_budget_s is not None:
        progress = max(progress, cpu_spent_s / cpu_time_budget_s)
    return min(progress, 1.0)


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
    cpu_time_budget_s: float | None = None,
    lr_schedule: LearningRateSchedule | None = None,
    after_step: StepCallback | None = None,
) -> TrainingResult:
    """Train ``model`` for a fixed number of iterations or a CPU-time budget.

    Uses automatic mixed precision (float16 autocast with gradient scaling)
    when ``device`` is CUDA, full precision on the CPU.

    Args:
        model: The network, already on ``device``.
        batches: An endless iterator of batches (dicts of CPU tensors).
        loss_fn: Computes the scalar loss of one batch already on ``device``.
        optimizer: Optimiser over the model's parameters.
        scheduler: Stepped once per iteration, or None. Use ``lr_schedule``
            instead when a CPU-time budget is set, because an iteration
            scheduler cannot know how many steps the budget allows.
        iterations: Number of optimiser steps; the maximum when
            ``cpu_time_budget_s`` is set.
        device: Where the model lives.
        validate: Returns validation metrics; a higher ``monitor`` value is
            better.
        monitor: The validation metric that selects the best checkpoint.
        validate_every: Iterations between validations (also run at the end).
        log_every: Iterations between log lines.
        description: Label of the progress bar and log lines.
        cpu_time_budget_s: Stop after the step at which the process has used
            this many CPU seconds (``time.process_time``, all threads, from
            the start of this call, validation included); None for no budget.
        lr_schedule: Sets every parameter group's learning rate to its
            initial value times ``lr_schedule(progress)`` after each step,
            where ``progress`` comes from ``training_progress``.
        after_step: Called after each optimiser step (and learning-rate
            update) with the iteration and the progress, for example to
            update an exponential-moving-average teacher.

    Raises:
        ValueError: ``iterations`` or ``cpu_time_budget_s`` is not positive,
            or both ``scheduler`` and ``lr_schedule`` are given.
        FloatingPointError: The loss becomes NaN or infinite.
    """
    if iterations <= 0:
        raise ValueError(f"iterations must be positive, got {iterations}")
    if cpu_time_budget_s is not None and cpu_time_budget_s <= 0:
        raise ValueError(f"cpu_time_budget_s must be positive or null, got {cpu_time_budget_s}")
    if scheduler is not None and lr_schedule is not None:
        raise ValueError("pass either an iteration scheduler or an lr_schedule, not both")
    # NOTE: the CUDA branch (autocast to float16 with gradient scaling) has not run in the test
    # suite, which has no GPU; only the CPU path is covered. On CUDA the CPU-time budget
    # measures the host process only, not GPU time.
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    initial_learning_rates = [group["lr"] for group in optimizer.param_groups]
    best_state = copy.deepcopy(model.state_dict())
    best_score, best_iteration = float("-inf"), 0
    history: list[dict[str, Any]] = []
    window_loss, window_images, window_started = 0.0, 0, time.perf_counter()
    cpu_started = cpu_clock()
    cpu_spent, iteration, stopped_by = 0.0, 0, "iterations"

    # disable=None hides the bar when stderr is not a terminal (CI logs get the log lines instead).
    progress_bar = tqdm(
        range(1, iterations + 1), desc=description, unit="it", mininterval=2.0, leave=False, disable=None
    )
    for iteration in progress_bar:
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

        cpu_spent = cpu_clock() - cpu_started
        progress = training_progress(iteration, iterations, cpu_spent, cpu_time_budget_s)
        if lr_schedule is not None:
            factor = lr_schedule(progress)
            for group, initial in zip(optimizer.param_groups, initial_learning_rates):
                group["lr"] = initial * factor
        if after_step is not None:
            after_step(iteration, progress)

        window_loss += loss.item()
        window_images += len(next(iter(batch.values())))
        progress_bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)

        budget_spent = cpu_time_budget_s is not None and cpu_spent >= cpu_time_budget_s
        is_last = iteration == iterations or budget_spent
        if iteration % log_every == 0 or is_last or (validate and iteration % validate_every == 0):
            elapsed = time.perf_counter() - window_started
            steps = iteration - (history[-1]["iteration"] if history else 0)
            point: dict[str, Any] = {
                "iteration": iteration,
                "train_loss": window_loss / max(steps, 1),
                "learning_rate": optimizer.param_groups[0]["lr"],
                "images_per_second": window_images / max(elapsed, 1e-9),
                "cpu_seconds": cpu_spent,
            }
            if validate is not None and (iteration % validate_every == 0 or is_last):
                point.update(validate(model))
                score = point[monitor]
                if score > best_score:
                    best_score, best_iteration = score, iteration
                    best_state = copy.deepcopy(model.state_dict())
            history.append(point)
            logger.info(
                "%s it %d/%d: loss %.4f, %s%.1f images/s, %.0f CPU s",
                description,
                iteration,
                iterations,
                point["train_loss"],
                f"{monitor} {point[monitor]:.4f}, " if monitor in point else "",
                point["images_per_second"],
                cpu_spent,
            )
            window_loss, window_images, window_started = 0.0, 0, time.perf_counter()
        if budget_spent:
            stopped_by = "cpu_time_budget"
            break
    progress_bar.close()

    cpu_spent = cpu_clock() - cpu_started
    if validate is None:
        best_state, best_iteration = copy.deepcopy(model.state_dict()), iteration
    if stopped_by == "cpu_time_budget":
        logger.info(
            "%s stopped by the CPU-time budget of %.0f s after %d of at most %d iterations",
            description,
            cpu_time_budget_s,
            iteration,
            iterations,
        )
    logger.info("%s done: best %s %.4f at iteration %d", description, monitor, best_score, best_iteration)
    return TrainingResult(best_state, best_score, best_iteration, history, iteration, cpu_spent, stopped_by)
