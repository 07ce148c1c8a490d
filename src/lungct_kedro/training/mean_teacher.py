"""Mean Teacher for segmentation: input perturbations and the consistency loss.

Mean Teacher (A. Tarvainen and H. Valpola, "Mean teachers are better role
models: weight-averaged consistency targets improve semi-supervised deep
learning results", NeurIPS 2017) keeps a teacher network whose weights are
the exponential moving average of the student's. The student is trained on
the labeled loss plus a consistency loss that pulls its softmax output
towards the teacher's on the same slices under different perturbations,
labeled or not. The teacher update, the sigmoid ramp-up and the
student-teacher module are shared with few-shot classification.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from lungct_kedro.training.classification import MeanTeacherPair, sigmoid_rampup, update_teacher

__all__ = [
    "MeanTeacherPair",
    "Perturbation",
    "perturb",
    "sigmoid_rampup",
    "softmax_mse",
    "unflip",
    "update_teacher",
]


@dataclass(frozen=True)
class Perturbation:
    """Random changes applied to each slice seen by the student or the teacher.

    Attributes:
        noise_std: Standard deviation of added Gaussian noise, in units of
            the [0, 1] intensity scale.
        intensity_jitter: Half-width j of the uniform draws of a contrast
            factor in [1 − j, 1 + j] and a brightness shift in [−j, j].
        flip: Flip each slice left-right and up-down, each with probability
            one half; outputs are flipped back before they are compared.
    """

    noise_std: float = 0.05
    intensity_jitter: float = 0.1
    flip: bool = True

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> Perturbation:
        """Build from ``segmentation.mean_teacher.perturbation``; missing keys keep their defaults.

        Raises:
            ValueError: A negative ``noise_std`` or ``intensity_jitter``.
        """
        merged = {**cls().__dict__, **(params or {})}
        perturbation = cls(float(merged["noise_std"]), float(merged["intensity_jitter"]), bool(merged["flip"]))
        if perturbation.noise_std < 0 or perturbation.intensity_jitter < 0:
            raise ValueError(
                "segmentation.mean_teacher.perturbation.noise_std and intensity_jitter must be 0 or more, "
                f"got {perturbation.noise_std} and {perturbation.intensity_jitter}"
            )
        return perturbation


def perturb(
    images: torch.Tensor, perturbation: Perturbation, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply contrast and brightness jitter, Gaussian noise and random flips to a batch.

    Args:
        images: (n, 1, H, W) batch on any device.
        perturbation: What to apply.
        generator: CPU generator for the random draws.

    Returns:
        The perturbed batch and the flips as a bool tensor (n, 2): column 0
        left-right (width axis), column 1 up-down (height axis).
    """
    n_slices = images.shape[0]
    device = images.device

    def uniform(half_width: float) -> torch.Tensor:
        draw = (torch.rand(n_slices, generator=generator) * 2 - 1) * half_width
        return draw.to(device).view(-1, 1, 1, 1)

    jitter = perturbation.intensity_jitter
    perturbed = images * (1 + uniform(jitter)) + uniform(jitter)
    if perturbation.noise_std > 0:
        noise = torch.randn(images.shape, generator=generator) * perturbation.noise_std
        perturbed = perturbed + noise.to(device=device, dtype=images.dtype)
    if perturbation.flip:
        flips = torch.rand(n_slices, 2, generator=generator) < 0.5
    else:
        flips = torch.zeros(n_slices, 2, dtype=torch.bool)
    return unflip(perturbed, flips), flips


def unflip(maps: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Flip each slice of ``maps`` along its last two axes where ``flips`` is True.

    A flip is its own inverse, so the same call applies and undoes the flips
    of ``perturb``. Works for (n, C, H, W) and for deep supervision outputs
    (n, heads, C, H, W).
    """
    flips = flips.to(maps.device)
    shape = (-1,) + (1,) * (maps.ndim - 1)
    flipped = torch.where(flips[:, 0].view(shape), maps.flip(-1), maps)
    return torch.where(flips[:, 1].view(shape), flipped.flip(-2), flipped)


def softmax_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Return the mean squared difference of the two softmax outputs (over the class axis 1).

    The teacher's side takes no gradient. Identical logits give exactly 0.
    """
    student = torch.softmax(student_logits.float(), dim=1)
    teacher = torch.softmax(teacher_logits.detach().float(), dim=1)
    return F.mse_loss(student, teacher)
