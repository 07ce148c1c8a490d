"""The loss of one segmentation training step, for every method.

Terms, each computed only when its method or option is on:

* segmentation: Dice + cross-entropy on the labeled slices, weighted by
  ``training.dice_weight`` and ``training.ce_weight`` (MONAI
  ``DiceCELoss``), wrapped in MONAI ``DeepSupervisionLoss`` when the network
  returns deep supervision heads;
* classification (multi-task): cross-entropy of the class head on every
  slice of the step that has a class, times ``multitask.loss_weight``;
* consistency (Mean Teacher): softmax mean squared difference between
  student and teacher on every slice of the step, plus the same on the class
  head (times ``multitask.loss_weight``) for a multi-task network, times the
  ramped-up ``mean_teacher.consistency_weight``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from monai.losses import DeepSupervisionLoss, DiceCELoss

from lungct_kedro.models.multitask import MultiTaskSegmenter
from lungct_kedro.models.segmentation import final_logits
from lungct_kedro.training.data import random_rotate_flip
from lungct_kedro.training.mean_teacher import Perturbation, perturb, sigmoid_rampup, softmax_mse, unflip, update_teacher

SegmentationCriterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def build_segmentation_criterion(dice_weight: float, ce_weight: float) -> SegmentationCriterion:
    """Return Dice + cross-entropy on logits (n, C, H, W) against class maps (n, 1, H, W).

    Deep supervision outputs (n, heads, C, H, W) go through MONAI's
    ``DeepSupervisionLoss``. Its default weights halve from one head to the
    next (1, 0.5, 0.25 …) and are not normalised, so the loss of a deep
    supervision network is larger than that of a plain one.
    """
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=float(dice_weight), lambda_ce=float(ce_weight))
    deep = DeepSupervisionLoss(dice_ce)

    def criterion(output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if output.ndim == 5:
            return deep(list(torch.unbind(output, dim=1)), labels)
        return dice_ce(output, labels)

    return criterion


def class_cross_entropy(class_logits: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
    """Return the mean cross-entropy over slices whose class label is not −1; 0 when none has one."""
    known = class_labels >= 0
    if not bool(known.any()):
        return class_logits.sum() * 0.0
    return F.cross_entropy(class_logits[known].float(), class_labels[known])


@dataclass
class MeanTeacherSettings:
    """Mean Teacher options of one run.

    Attributes:
        ema_decay: Maximum EMA decay of the teacher weights.
        consistency_weight: Weight of the consistency loss after the ramp-up.
        rampup_share: Share of training (iterations, or the CPU-time budget)
            over which the weight rises as ``exp(−5·(1 − t)²)``.
        perturbation: Changes applied separately to the student's and the
            teacher's inputs.
    """

    ema_decay: float
    consistency_weight: float
    rampup_share: float
    perturbation: Perturbation


@dataclass
class SegmentationObjective:
    """The loss function of the training loop, and its after-step hook.

    Batches hold ``image`` and ``label`` of labeled slices, optionally
    ``class_label`` (−1 = none), and optionally ``extra_image`` and
    ``extra_class_label`` of slices without masks (unlabeled slices for the
    consistency loss, slices that only carry a class for the class head).

    Attributes:
        criterion: The segmentation loss.
        generator: CPU generator of augmentation and perturbation draws.
        rotate_degrees: Maximum random rotation of each training slice.
        flip_probability: Chance of a random flip per axis.
        class_weight: Weight of the classification loss (multi-task).
        mean_teacher: Mean Teacher options, or None for supervised training.
        progress: Training progress in [0, 1] after the last step.
        totals: Sums of each loss term since ``take_means`` was last called.
        _pair: The Mean Teacher pair passed to the last call.
    """

    criterion: SegmentationCriterion
    generator: torch.Generator
    rotate_degrees: float = 0.0
    flip_probability: float = 0.0
    class_weight: float = 0.0
    mean_teacher: MeanTeacherSettings | None = None
    progress: float = 0.0
    totals: dict[str, float] = field(default_factory=dict)
    _pair: torch.nn.Module | None = None

    def consistency_weight(self) -> float:
        """Return the consistency weight at the current progress (0 for supervised training)."""
        if self.mean_teacher is None:
            return 0.0
        ramp = sigmoid_rampup(self.progress, self.mean_teacher.rampup_share)
        return self.mean_teacher.consistency_weight * ramp

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Return the loss of one batch; ``model`` is the network, or the Mean Teacher pair."""
        student = model.student if self.mean_teacher is not None else model
        self._pair = model if self.mean_teacher is not None else None
        multitask = isinstance(student, MultiTaskSegmenter)

        labeled = random_rotate_flip(
            {"image": batch["image"], "label": batch["label"]}, self.rotate_degrees, self.flip_probability, self.generator
        )
        n_labeled = len(labeled["image"])
        images = labeled["image"]
        class_labels = batch.get("class_label", torch.full((n_labeled,), -1, device=images.device))
        if "extra_image" in batch:
            extra = random_rotate_flip(
                {"image": batch["extra_image"]}, self.rotate_degrees, self.flip_probability, self.generator
            )["image"]
            images = torch.cat([images, extra])
            extra_labels = batch.get("extra_class_label", torch.full((len(extra),), -1, device=images.device))
            class_labels = torch.cat([class_labels, extra_labels])

        student_flips = None
        student_input = images
        if self.mean_teacher is not None:
            student_input, student_flips = perturb(images, self.mean_teacher.perturbation, self.generator)
        output = student(student_input, with_class=True) if multitask else student(student_input)
        segmentation, class_logits = output if multitask else (output, None)
        if student_flips is not None:
            segmentation = unflip(segmentation, student_flips)

        terms = {"loss_segmentation": self.criterion(segmentation[:n_labeled], labeled["label"])}
        loss = terms["loss_segmentation"]
        if multitask:
            terms["loss_classification"] = class_cross_entropy(class_logits, class_labels)
            loss = loss + self.class_weight * terms["loss_classification"]
        if self.mean_teacher is not None:
            teacher_input, teacher_flips = perturb(images, self.mean_teacher.perturbation, self.generator)
            with torch.no_grad():
                teacher_output = model.teacher(teacher_input, with_class=True) if multitask else model.teacher(teacher_input)
            teacher_segmentation, teacher_class = teacher_output if multitask else (teacher_output, None)
            teacher_segmentation = unflip(final_logits(teacher_segmentation), teacher_flips)
            consistency = softmax_mse(final_logits(segmentation), teacher_segmentation)
            if multitask:
                consistency = consistency + self.class_weight * softmax_mse(class_logits, teacher_class)
            terms["loss_consistency"] = consistency
            loss = loss + self.consistency_weight() * consistency

        for name, value in terms.items():
            self.totals[name] = self.totals.get(name, 0.0) + float(value.detach())
        self.totals["steps"] = self.totals.get("steps", 0.0) + 1
        return loss

    def after_step(self, iteration: int, progress: float) -> None:
        """Record the progress; for Mean Teacher, move the teacher of the last pair seen towards its student."""
        self.progress = progress
        if self.mean_teacher is not None and self._pair is not None:
            update_teacher(self._pair.teacher, self._pair.student, self.mean_teacher.ema_decay, iteration)

    def take_means(self) -> dict[str, float]:
        """Return each loss term's mean since the last call, and the current consistency weight; then reset."""
        steps = self.totals.pop("steps", 0.0)
        means = {name: total / steps for name, total in self.totals.items()} if steps else {}
        self.totals.clear()
        if self.mean_teacher is not None:
            means["consistency_weight"] = self.consistency_weight()
        return means
