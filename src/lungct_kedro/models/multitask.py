"""One encoder, two heads: lesion segmentation and slice classification."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from lungct_kedro.models.segmentation import bottleneck_module_name


class MultiTaskSegmenter(torch.nn.Module):
    """A segmentation network with a classification head on its deepest encoder features.

    The head global-average-pools the bottleneck feature map (see
    ``bottleneck_module_name``) and applies one linear layer, so both tasks
    share the whole encoder. ``forward`` returns the segmentation logits
    only, so prediction, test-time augmentation and inference treat this
    model like any segmentation network; ``forward(images, with_class=True)``
    also returns the class logits.

    The features are taken with a forward hook registered for the duration
    of one call, which keeps the module copyable (the Mean Teacher copy) and
    its ``state_dict`` plain.

    Args:
        segmenter: A network from ``build_segmentation_model``.
        model_params: The parameters it was built from.
        n_classes: Classes of the classification head.
    """

    def __init__(self, segmenter: torch.nn.Module, model_params: Mapping[str, Any], n_classes: int) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"a classification head needs at least two classes, got {n_classes}")
        self.segmenter = segmenter
        self.feature_module_name, channels = bottleneck_module_name(segmenter, model_params)
        self.classifier = torch.nn.Linear(channels, n_classes)

    def forward(
        self, images: torch.Tensor, with_class: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Return the segmentation logits, and the class logits (n, classes) when ``with_class``."""
        captured: list[Any] = []
        module = self.segmenter.get_submodule(self.feature_module_name)
        handle = module.register_forward_hook(lambda _module, _inputs, output: captured.append(output))
        try:
            segmentation = self.segmenter(images)
        finally:
            handle.remove()
        if not with_class:
            return segmentation
        features = captured[-1]
        if isinstance(features, (list, tuple)):
            features = features[-1]
        pooled = features.float().mean(dim=(2, 3))
        return segmentation, self.classifier(pooled)
