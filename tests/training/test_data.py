"""Tests of store batches and batch augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lungct_kedro.datasets.slice_store import SliceStore
from lungct_kedro.training.data import endless_store_batches, random_rotate_flip, read_slices


def make_store(n_slices: int = 10, size: int = 16) -> SliceStore:
    images = np.stack([np.full((size, size), index / n_slices) for index in range(n_slices)]).astype(np.float16)
    masks = np.zeros((n_slices, size, size), dtype=np.uint8)
    masks[:, 2:6, 3:9] = 2
    masks[:, 8:12, 8:10] = 1
    return SliceStore(arrays={"image": images, "mask": masks})


def test_read_slices_keeps_requested_order():
    store = make_store()
    batch = read_slices(store, [7, 2, 5])
    assert batch["image"].shape == (3, 1, 16, 16)
    assert batch["image"][:, 0, 0, 0].tolist() == pytest.approx([0.7, 0.2, 0.5], abs=1e-3)


def test_read_slices_binary_labels():
    batch = read_slices(make_store(), [0], binary=True)
    assert set(batch["label"].unique().tolist()) == {0, 1}


def test_batches_cover_every_row_per_pass():
    store = make_store(n_slices=12)
    generator = torch.Generator().manual_seed(0)
    batches = endless_store_batches(store, range(12), batch_size=4, generator=generator)
    seen = torch.cat([next(batches)["image"][:, 0, 0, 0] for _ in range(3)])
    assert sorted(np.round(seen.numpy() * 12).astype(int).tolist()) == list(range(12))


def test_small_set_forms_one_batch():
    batches = endless_store_batches(make_store(n_slices=3), range(3), 8, torch.Generator().manual_seed(0))
    assert len(next(batches)["image"]) == 3


def test_no_rows_rejected():
    with pytest.raises(ValueError, match="no slices"):
        next(endless_store_batches(make_store(), [], 4, torch.Generator()))


def test_certain_flip_mirrors_both_axes():
    batch = read_slices(make_store(), [1, 3])
    batch["image"] = torch.rand_like(batch["image"])
    result = random_rotate_flip(batch, max_degrees=0.0, flip_probability=1.0, generator=torch.Generator())
    assert torch.allclose(result["image"], torch.flip(batch["image"], dims=[2, 3]), atol=1e-5)
    assert torch.equal(result["label"], torch.flip(batch["label"], dims=[2, 3]))


def test_no_augmentation_is_identity():
    batch = read_slices(make_store(), [0, 4])
    result = random_rotate_flip(batch, max_degrees=0.0, flip_probability=0.0, generator=torch.Generator())
    assert torch.allclose(result["image"], batch["image"], atol=1e-5)
    assert torch.equal(result["label"], batch["label"])


def test_rotation_keeps_labels_aligned():
    size = 32
    label = torch.zeros(4, 1, size, size, dtype=torch.int64)
    label[:, :, 8:20, 10:24] = 2
    batch = {"image": (label > 0).float(), "label": label}
    result = random_rotate_flip(batch, max_degrees=30.0, flip_probability=0.5, generator=torch.Generator().manual_seed(1))
    assert set(result["label"].unique().tolist()) <= {0, 2}
    agreement = ((result["image"] > 0.5) == (result["label"] > 0)).float().mean()
    assert agreement > 0.97
    assert not torch.equal(result["label"], label)
