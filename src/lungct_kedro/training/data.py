"""Batches read straight from the memory-mapped slice store, and their augmentation."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lungct_kedro.datasets.slice_store import SliceStore


def read_slices(store: SliceStore, rows: Sequence[int], binary: bool = False) -> dict[str, torch.Tensor]:
    """Read store rows as a batch ``{"image": (n, 1, H, W), "label": (n, 1, H, W)}``.

    Rows are read in ascending order, which keeps memory-mapped reads
    sequential, and returned in the order given. ``label`` is present only
    when the store has masks; ``binary`` merges every lesion class into 1.
    """
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    images = np.asarray(store.arrays["image"][rows[order]], dtype=np.float32)[inverse]
    batch = {"image": torch.from_numpy(images)[:, None]}
    if store.has("mask"):
        masks = np.asarray(store.arrays["mask"][rows[order]], dtype=np.int64)[inverse]
        if binary:
            masks = (masks > 0).astype(np.int64)
        batch["label"] = torch.from_numpy(masks)[:, None]
    return batch


def class_labels(rows: Sequence[int], class_targets: Mapping[int, int]) -> torch.Tensor:
    """Return the class index of each store row, −1 for rows without a class (int64)."""
    return torch.tensor([int(class_targets.get(int(row), -1)) for row in rows], dtype=torch.int64)


def endless_store_batches(
    store: SliceStore,
    rows: Sequence[int],
    batch_size: int,
    generator: torch.Generator,
    binary: bool = False,
    class_targets: Mapping[int, int] | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield shuffled batches of store rows forever, reshuffling at each pass.

    A pass drops its last incomplete batch, except when there are fewer rows
    than one batch, where all rows form the batch. With ``class_targets``
    (store row → class index) each batch also has ``class_label`` (n,),
    −1 where a row has no class.

    Raises:
        ValueError: ``rows`` is empty.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        raise ValueError("no slices to train on")
    per_pass = max(len(rows) // batch_size, 1)
    while True:
        permutation = torch.randperm(len(rows), generator=generator).numpy()
        for start in range(0, per_pass * batch_size, batch_size):
            chosen = rows[permutation[start : start + batch_size]]
            batch = read_slices(store, chosen, binary)
            if class_targets is not None:
                batch["class_label"] = class_labels(chosen, class_targets)
            yield batch


def with_extra_batches(
    batches: Iterator[dict[str, torch.Tensor]], extra: Iterator[dict[str, torch.Tensor]]
) -> Iterator[dict[str, torch.Tensor]]:
    """Join each batch with one batch of ``extra``, whose keys get the prefix ``extra_``.

    The extra batches carry images without masks (for example unlabeled
    slices for a consistency loss), so their ``label`` is dropped.
    """
    for batch, extra_batch in zip(batches, extra):
        joined = dict(batch)
        for key, value in extra_batch.items():
            if key != "label":
                joined[f"extra_{key}"] = value
        yield joined


def random_rotate_flip(
    batch: dict[str, torch.Tensor],
    max_degrees: float,
    flip_probability: float,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """Rotate and flip each slice of a batch at random, image and label alike.

    One affine resampling per batch (``torch.nn.functional.grid_sample``):
    bilinear for images, nearest for labels, zero outside the slice. Runs on
    whatever device the batch is on.

    Args:
        batch: ``image`` (n, 1, H, W) float and optional ``label`` (n, 1, H, W).
        max_degrees: Rotation angles are drawn uniformly from
            [-max_degrees, max_degrees].
        flip_probability: Chance of a flip, drawn separately per axis.
        generator: CPU generator for the random draws.
    """
    images = batch["image"]
    n_slices = images.shape[0]
    angles = (torch.rand(n_slices, generator=generator) * 2 - 1) * math.radians(max_degrees)
    flip_x = torch.where(torch.rand(n_slices, generator=generator) < flip_probability, -1.0, 1.0)
    flip_y = torch.where(torch.rand(n_slices, generator=generator) < flip_probability, -1.0, 1.0)
    cos, sin = torch.cos(angles), torch.sin(angles)
    # Sampling matrix = rotation @ diag(flip_x, flip_y), in normalised coordinates.
    theta = torch.zeros(n_slices, 2, 3)
    theta[:, 0, 0] = cos * flip_x
    theta[:, 0, 1] = -sin * flip_y
    theta[:, 1, 0] = sin * flip_x
    theta[:, 1, 1] = cos * flip_y
    grid = F.affine_grid(theta.to(images.device), list(images.shape), align_corners=False)
    augmented = {"image": F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)}
    if "label" in batch:
        labels = F.grid_sample(batch["label"].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
        augmented["label"] = labels.round().to(batch["label"].dtype)
    return augmented
