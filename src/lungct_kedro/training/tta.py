"""Class probabilities of a segmentation network, with optional flip test-time augmentation."""

from __future__ import annotations

import torch

from lungct_kedro.models.segmentation import final_logits

#: Spatial axes flipped by each test-time view of an (n, C, H, W) batch: none, W, H, both.
FLIP_VIEWS: tuple[tuple[int, ...], ...] = ((), (3,), (2,), (2, 3))


def flip(images: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Flip ``images`` along ``dims``; no dims returns the tensor itself. A flip is its own inverse."""
    return torch.flip(images, dims=list(dims)) if dims else images


@torch.no_grad()
def predict_probabilities(model: torch.nn.Module, images: torch.Tensor, flip_tta: bool = False) -> torch.Tensor:
    """Return softmax class probabilities (n, C, H, W) of ``model`` on ``images``.

    With ``flip_tta`` the network is also applied to the images flipped
    left-right, up-down and both. Each output is flipped back before the
    four probability maps are averaged. For a network whose output flips with its
    input, the average equals the plain prediction.

    Args:
        model: A segmentation network in evaluation mode, on the device of
            ``images``.
        images: (n, 1, H, W) batch.
        flip_tta: Average over the four flip views.
    """
    views = FLIP_VIEWS if flip_tta else ((),)
    total = None
    for dims in views:
        logits = final_logits(model(flip(images, dims)))
        probabilities = flip(torch.softmax(logits.float(), dim=1), dims)
        total = probabilities if total is None else total + probabilities
    return total / len(views)
