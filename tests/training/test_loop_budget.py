"""Tests of the shared loop's CPU-time budget and progress-based learning-rate schedule."""

from __future__ import annotations

import pytest
import torch

from lungct_kedro.training import loop
from lungct_kedro.training.loop import train_iterations, training_progress


def batches():
    inputs = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    while True:
        yield {"x": inputs, "y": inputs.sum(dim=1, keepdim=True)}


def mse(model, batch):
    return torch.nn.functional.mse_loss(model(batch["x"]), batch["y"])


class FakeClock:
    """A CPU clock that advances by ``step`` seconds on every reading."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.mark.parametrize(
    ("iteration", "iterations", "spent", "budget", "expected"),
    [(5, 10, 0.0, None, 0.5), (5, 10, 3.0, 10.0, 0.5), (2, 10, 8.0, 10.0, 0.8), (10, 10, 30.0, 10.0, 1.0)],
)
def test_training_progress(iteration, iterations, spent, budget, expected):
    assert training_progress(iteration, iterations, spent, budget) == pytest.approx(expected)


def test_budget_stops_and_schedule_follows_spent_share(monkeypatch):
    # The loop reads the clock once at the start and once per step, and once at the end.
    monkeypatch.setattr(loop, "cpu_clock", FakeClock(1.0))
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = []
    result = train_iterations(
        model, batches(), mse, optimizer, None, iterations=1000, device=torch.device("cpu"),
        log_every=1, cpu_time_budget_s=4.0, lr_schedule=lambda progress: 1.0 - progress,
        after_step=lambda iteration, progress: steps.append((iteration, progress)),
    )
    assert result.stopped_by == "cpu_time_budget"
    assert result.iterations_run == 4
    assert [point["cpu_seconds"] for point in result.history] == [1.0, 2.0, 3.0, 4.0]
    assert [point["learning_rate"] for point in result.history] == pytest.approx([0.075, 0.05, 0.025, 0.0])
    assert steps == [(1, 0.25), (2, 0.5), (3, 0.75), (4, 1.0)]
    assert result.best_iteration == 4


def test_iterations_remain_the_maximum(monkeypatch):
    monkeypatch.setattr(loop, "cpu_clock", FakeClock(0.001))
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    result = train_iterations(
        model, batches(), mse, optimizer, None, iterations=5, device=torch.device("cpu"),
        log_every=5, cpu_time_budget_s=100.0, lr_schedule=lambda progress: (1.0 - progress) ** 2,
    )
    assert result.stopped_by == "iterations"
    assert result.iterations_run == 5
    assert result.history[-1]["learning_rate"] == pytest.approx(0.0)


def test_budget_validation_runs_at_the_end(monkeypatch):
    monkeypatch.setattr(loop, "cpu_clock", FakeClock(1.0))
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    result = train_iterations(
        model, batches(), mse, optimizer, None, iterations=100, device=torch.device("cpu"),
        validate=lambda network: {"val_dice": 0.5}, validate_every=50, log_every=50, cpu_time_budget_s=3.0,
    )
    assert [point["iteration"] for point in result.history] == [3]
    assert result.history[0]["val_dice"] == 0.5
    assert result.best_iteration == 3


def test_invalid_budget_and_schedule_rejected():
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="cpu_time_budget_s"):
        train_iterations(model, batches(), mse, optimizer, None, 5, torch.device("cpu"), cpu_time_budget_s=0.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    with pytest.raises(ValueError, match="not both"):
        train_iterations(model, batches(), mse, optimizer, scheduler, 5, torch.device("cpu"), lr_schedule=lambda p: 1.0)
