"""Tests of the shared training loop."""

from __future__ import annotations

import itertools

import pytest
import torch

from lungct_kedro.training.device import select_device
from lungct_kedro.training.loop import train_iterations


def regression_batches():
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(64, 3, generator=generator)
    targets = inputs @ torch.tensor([[1.0], [-2.0], [0.5]])
    while True:
        yield {"x": inputs, "y": targets}


def mse(model, batch):
    return torch.nn.functional.mse_loss(model(batch["x"]), batch["y"])


def test_loss_falls_and_best_state_kept():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scores = itertools.count()

    def validate(network):
        return {"val_score": float(next(scores))}

    result = train_iterations(
        model,
        regression_batches(),
        mse,
        optimizer,
        None,
        iterations=40,
        device=torch.device("cpu"),
        validate=validate,
        monitor="val_score",
        validate_every=10,
        log_every=10,
    )
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"] / 10
    assert result.best_iteration == 40
    assert [point["iteration"] for point in result.history] == [10, 20, 30, 40]


def test_best_state_is_earliest_best():
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    values = iter([0.9, 0.1, 0.2])
    snapshots = []

    def validate(network):
        snapshots.append(network.weight.detach().clone())
        return {"val_dice": next(values)}

    result = train_iterations(
        model, regression_batches(), mse, optimizer, None, 30, torch.device("cpu"), validate=validate, validate_every=10
    )
    assert result.best_iteration == 10
    assert torch.equal(result.best_state["weight"], snapshots[0])


def test_nan_loss_stops_training():
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def nan_loss(network, batch):
        return network(batch["x"]).sum() * float("nan")

    with pytest.raises(FloatingPointError, match="learning rate"):
        train_iterations(model, regression_batches(), nan_loss, optimizer, None, 5, torch.device("cpu"))


def test_device_choice_validated():
    with pytest.raises(ValueError, match="device"):
        select_device("tpu")
    assert select_device("cpu").type == "cpu"
