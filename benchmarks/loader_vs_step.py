"""Throughput of the slice-store loader, a file-decoding loader and the training step.

Run from the project root (``make benchmark``). Everything is measured in one
process on the same synthetic slices, so the rows are comparable:

* store loader: batches from the memory-mapped slice store with the batch
  rotation and flip augmentation, as the segmentation pipeline reads them;
* PNG loader (reference): the same batches and augmentation, but each slice
  and mask decoded from PNG files at every step, as a folder-of-images
  loader would;
* training step: forward, backward and SGD step of the default U-Net on a
  batch already in memory.

The loader should be several times faster than the step, so that training
does not wait for data; the last column of the table gives the ratio.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from lungct_kedro.datasets.slice_store import SliceStore, SliceStoreDataset
from lungct_kedro.phantom import DEFAULT as PHANTOM_DEFAULT
from lungct_kedro.phantom import generate_phantom_slices
from lungct_kedro.imaging.hu import apply_window, resize_image, resize_mask
from lungct_kedro.models.segmentation import build_segmentation_model
from lungct_kedro.training.data import endless_store_batches, random_rotate_flip
from monai.losses import DiceCELoss

ROOT = Path(__file__).resolve().parents[1]


def endless_png_batches(folder: Path, n_slices: int, batch_size: int, generator: torch.Generator):
    """Reference loader: decode a PNG image and mask for every slice of every batch."""
    while True:
        rows = torch.randperm(n_slices, generator=generator)[:batch_size].tolist()
        images, labels = [], []
        for row in rows:
            images.append(np.asarray(Image.open(folder / f"{row}_image.png"), dtype=np.float32) / 65535.0)
            labels.append(np.asarray(Image.open(folder / f"{row}_mask.png"), dtype=np.int64))
        yield {
            "image": torch.from_numpy(np.stack(images))[:, None],
            "label": torch.from_numpy(np.stack(labels))[:, None],
        }


def augmented(batches, augmentation: dict, generator: torch.Generator):
    """Apply the pipeline's batch augmentation to every batch."""
    for batch in batches:
        yield random_rotate_flip(batch, augmentation["rotate_degrees"], augmentation["flip_probability"], generator)


def build_phantom_store(size: int, n_patients: int, folder: Path) -> SliceStore:
    params = {**PHANTOM_DEFAULT, "image_size": size, "n_patients": n_patients}
    params["low_quality"] = {**PHANTOM_DEFAULT["low_quality"], "n_angles": 30}
    images, masks = [], []
    for raw in generate_phantom_slices(params, seed=1):
        images.append(apply_window(resize_image(raw.pixels, size, -1024.0), -600.0, 1500.0))
        masks.append(resize_mask(raw.mask, size))
    store = SliceStore(arrays={"image": np.stack(images).astype(np.float16), "mask": np.stack(masks)})
    SliceStoreDataset(str(folder / "store")).save(store)
    for index, (image, mask) in enumerate(zip(images, masks)):
        Image.fromarray(np.round(image * 65535).astype(np.uint16)).save(folder / f"{index}_image.png")
        Image.fromarray(mask).save(folder / f"{index}_mask.png")
    return SliceStoreDataset(str(folder / "store")).load()


def images_per_second(batches, n_batches: int) -> float:
    next(batches)  # warm-up: worker start, first shuffle
    started = time.perf_counter()
    count = 0
    for _ in range(n_batches):
        count += len(next(batches)["image"])
    return count / (time.perf_counter() - started)


def step_images_per_second(params: dict, size: int, batch_size: int, n_steps: int) -> float:
    torch.manual_seed(0)
    model = build_segmentation_model(params["model"], 3)
    criterion = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.rand(batch_size, 1, size, size)
    labels = torch.randint(0, 3, (batch_size, 1, size, size))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(images), labels)
        loss.backward()
        optimizer.step()

    step()
    started = time.perf_counter()
    for _ in range(n_steps):
        step()
    return batch_size * n_steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256], help="slice sizes in px")
    parser.add_argument("--batches", type=int, default=30, help="batches timed per loader")
    parser.add_argument("--steps", type=int, default=10, help="training steps timed")
    parser.add_argument("--output", type=Path, default=None, help="Markdown file to write the table to")
    args = parser.parse_args()

    params = yaml.safe_load((ROOT / "conf/base/parameters_segmentation.yml").read_text())["segmentation"]
    batch_size = int(params["training"]["batch_size"])
    augmentation = params["augmentation"]
    rows = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as temporary:
            folder = Path(temporary)
            store = build_phantom_store(size, n_patients=4, folder=folder)
            generator = torch.Generator().manual_seed(0)
            store_rate = images_per_second(
                augmented(endless_store_batches(store, range(len(store)), batch_size, generator), augmentation, generator),
                args.batches,
            )
            png_rate = images_per_second(
                augmented(endless_png_batches(folder, len(store), batch_size, generator), augmentation, generator),
                args.batches,
            )
        step_rate = step_images_per_second(params, size, batch_size, args.steps)
        rows.append((size, store_rate, png_rate, step_rate))
        print(
            f"{size} px: store loader {store_rate:.0f} img/s, PNG loader {png_rate:.0f} img/s, "
            f"training step {step_rate:.1f} img/s, loader/step {store_rate / step_rate:.1f}x",
            flush=True,
        )

    if args.output:
        write_markdown(args.output, rows, batch_size, params)


def write_markdown(path: Path, rows, batch_size: int, params: dict) -> None:
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
    lines = [
        "## Data loader against training step",
        "",
        f"Measured {datetime.date.today().isoformat()} with `make benchmark` "
        f"(`benchmarks/loader_vs_step.py`) on {machine}; CPU only, one process, "
        f"batch size {batch_size}, U-Net channels {params['model']['channels']}, "
        "rotation and flip augmentation on both loaders.",
        "",
        "| slice size (px) | store loader (images/s) | PNG-decoding loader, reference (images/s) "
        "| training step (images/s) | store loader / step |",
        "|---:|---:|---:|---:|---:|",
    ]
    for size, store_rate, png_rate, step_rate in rows:
        lines.append(
            f"| {size} | {store_rate:.0f} | {png_rate:.0f} | {step_rate:.1f} | {store_rate / step_rate:.1f}× |"
        )
    lines.append("")
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    marker = "## Data loader against training step"
    if marker in text:
        start = text.index(marker)
        end = text.find("\n## ", start + len(marker))
        text = text[:start] + "\n".join(lines) + (text[end:] if end != -1 else "")
    else:
        text = text.rstrip() + "\n\n" + "\n".join(lines)
    path.write_text(text)


if __name__ == "__main__":
    main()
