"""Device choice and seeding for reproducible training."""

from __future__ import annotations

import logging
import random

import numpy as np
import torch

logger = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def select_device(preference: str = "auto") -> torch.device:
    """Pick the training device.

    Args:
        preference: ``auto`` (CUDA when available, else CPU), ``cpu`` or
            ``cuda``.

    Raises:
        ValueError: ``preference`` is not one of ``DEVICE_CHOICES``, or is
            ``cuda`` on a machine without a usable GPU.
    """
    if preference not in DEVICE_CHOICES:
        raise ValueError(f"device must be one of {DEVICE_CHOICES}, got {preference!r}")
    cuda = torch.cuda.is_available()
    if preference == "cuda" and not cuda:
        raise ValueError("device is 'cuda' but no CUDA GPU is available; set device: auto or cpu")
    device = torch.device("cuda" if cuda and preference != "cpu" else "cpu")
    if device.type == "cpu" and preference == "auto":
        logger.info("No CUDA GPU found: training on the CPU with %d threads", torch.get_num_threads())
    return device


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch, and return a seeded torch generator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator
