"""Self-supervised Siamese networks on the shared ResNet-18 encoder.

Three methods learn an encoder from two augmented views of the same slice,
without labels:

* SimSiam: X. Chen and K. He, "Exploring Simple Siamese Representation
  Learning", CVPR 2021. A predictor MLP on one branch and a stop-gradient on
  the other; the loss is the negative cosine similarity, symmetrised.
* BYOL: J.-B. Grill et al., "Bootstrap Your Own Latent: A New Approach to
  Self-Supervised Learning", NeurIPS 2020. An online network with a
  predictor regresses the projection of a target network whose weights are
  an exponential moving average (EMA) of the online ones.
* SimCLR: T. Chen et al., "A Simple Framework for Contrastive Learning of
  Visual Representations", ICML 2020. The NT-Xent contrastive loss treats the
  other view of a slice as the positive and the other 2n − 2 views of the
  batch as negatives.

Every model keeps the encoder as ``model.encoder``, so its ``state_dict``
loads into ``SliceClassifier.encoder`` and into any network built with
``build_resnet18_encoder``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from lungct_kedro.models.encoders import ENCODER_FEATURES, build_resnet18_encoder

METHODS = ("simsiam", "byol", "simclr")


# ---------- losses and statistics ----------


def negative_cosine(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Return the mean of ``−cos(prediction, stopgrad(target))`` over the batch.

    The value is −1 when every prediction points the same way as its target.
    """
    return -F.cosine_similarity(prediction, target.detach(), dim=1).mean()


def simsiam_loss(
    p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor
) -> torch.Tensor:
    """Return SimSiam's symmetric loss ``D(p1, z2)/2 + D(p2, z1)/2`` with ``D`` = ``negative_cosine``.

    ``p`` are predictor outputs and ``z`` projector outputs of views 1 and 2.
    The range is [−1, 1]; −1 means perfectly aligned predictions.
    """
    return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Return BYOL's regression loss ``2 − 2·cos(prediction, target)``, averaged over the batch.

    Equals the squared distance of the L2-normalised vectors; 0 when aligned,
    4 when opposite. ``target`` takes no gradient.
    """
    return (2.0 - 2.0 * F.cosine_similarity(prediction, target.detach(), dim=1)).mean()


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Return SimCLR's normalised temperature-scaled cross-entropy (NT-Xent).

    Row i of ``z1`` and row i of ``z2`` are the two views of one slice. Each
    of the 2n views is classified among the other 2n − 1 by cosine
    similarity divided by ``temperature``, with its partner view as the
    correct class.

    Raises:
        ValueError: ``temperature`` is not positive, or the views differ in shape.
    """
    if temperature <= 0:
        raise ValueError(f"NT-Xent temperature must be positive, got {temperature}")
    if z1.shape != z2.shape:
        raise ValueError(f"the two views need embeddings of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = z1.shape[0]
    embeddings = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = embeddings @ embeddings.T / temperature
    # A view is never its own candidate.
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=logits.device), float("-inf"))
    partners = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(logits.device)
    return F.cross_entropy(logits, partners)


def embedding_std(embeddings: torch.Tensor) -> float:
    """Return the collapse statistic: std over the batch of the L2-normalised embeddings.

    The per-dimension standard deviation is averaged over dimensions. For
    embeddings spread like an isotropic Gaussian in ``d`` dimensions it is
    about ``1/sqrt(d)``; when every slice maps to the same direction it is 0.
    This is the statistic Chen and He (2021) plot to show collapse.
    """
    normalised = F.normalize(embeddings.detach().float(), dim=1)
    return float(normalised.std(dim=0).mean())


@torch.no_grad()
def ema_update(target: torch.nn.Module, online: torch.nn.Module, decay: float) -> None:
    """Move ``target`` towards ``online``: ``target = decay·target + (1 − decay)·online``.

    Applied to parameters and floating-point buffers (batch-norm statistics);
    integer buffers are copied.

    Raises:
        ValueError: ``decay`` is outside [0, 1].
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must lie in [0, 1], got {decay}")
    for target_value, online_value in zip(target.parameters(), online.parameters()):
        target_value.mul_(decay).add_(online_value.detach(), alpha=1.0 - decay)
    for target_buffer, online_buffer in zip(target.buffers(), online.buffers()):
        if target_buffer.is_floating_point():
            target_buffer.mul_(decay).add_(online_buffer, alpha=1.0 - decay)
        else:
            target_buffer.copy_(online_buffer)


# ---------- building blocks ----------


def build_mlp(in_features: int, hidden_features: int, out_features: int, layers: int, last_batch_norm: bool):
    """Build ``layers`` linear layers with batch norm and ReLU between them.

    ``last_batch_norm`` adds a batch norm (no ReLU) after the last layer, as
    SimSiam's projector has.

    Raises:
        ValueError: ``layers`` is below 1.
    """
    if layers < 1:
        raise ValueError(f"an MLP needs at least 1 layer, got {layers}")
    modules: list[torch.nn.Module] = []
    width = in_features
    for _ in range(layers - 1):
        modules += [
            torch.nn.Linear(width, hidden_features, bias=False),
            torch.nn.BatchNorm1d(hidden_features),
            torch.nn.ReLU(inplace=True),
        ]
        width = hidden_features
    modules.append(torch.nn.Linear(width, out_features, bias=not last_batch_norm))
    if last_batch_norm:
        modules.append(torch.nn.BatchNorm1d(out_features))
    return torch.nn.Sequential(*modules)


def resnet_feature_map(encoder: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Run a torchvision ResNet trunk up to ``layer4`` and return its (n, c, h, w) feature map.

    Global average pooling of this map gives ``encoder(images)`` when ``fc``
    is an identity.
    """
    x = encoder.maxpool(encoder.relu(encoder.bn1(encoder.conv1(images))))
    return encoder.layer4(encoder.layer3(encoder.layer2(encoder.layer1(x))))


def mask_pooled_features(feature_map: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average ``feature_map`` over the lesion region of each slice.

    Args:
        feature_map: (n, c, h, w) encoder features.
        masks: (n, 1, H, W) lesion masks (any value > 0 is lesion).

    Returns:
        (n, c) mask-pooled features, and a boolean (n,) that is True where
        the slice has lesion area at the feature resolution.
    """
    weights = F.adaptive_avg_pool2d((masks > 0).float(), feature_map.shape[-2:])
    area = weights.sum(dim=(1, 2, 3))
    pooled = (feature_map * weights).sum(dim=(2, 3)) / area.clamp_min(1e-6)[:, None]
    return pooled, area > 1e-6


def _dims(params: Mapping[str, Any]) -> tuple[int, int, int, int, int]:
    projector, predictor = params["projector"], params.get("predictor", {})
    return (
        int(projector["hidden_dim"]),
        int(projector["out_dim"]),
        int(projector["layers"]),
        int(predictor.get("hidden_dim", 0)),
        int(params.get("in_channels", 1)),
    )


# ---------- models ----------


class SiameseModel(torch.nn.Module):
    """Base of the three methods: the encoder, a projector and a way to score two views.

    Subclasses implement ``pair_loss``. ``forward`` returns the projection
    used by the collapse watch.
    """

    method = ""

    def __init__(self, encoder: torch.nn.Module, n_features: int, projector: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.n_features = n_features
        self.projector = projector

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return the projector output of shape (n, out_dim)."""
        return self.projector(self.encoder(images))

    def pair_loss(
        self, view1: torch.Tensor, view2: torch.Tensor, features1: torch.Tensor, features2: torch.Tensor
    ) -> torch.Tensor:
        """Return the method's loss for two views and their pooled encoder features (n, n_features)."""
        raise NotImplementedError

    def after_step(self, step: int, total_steps: int) -> None:
        """Update state that follows the optimiser step (BYOL's target network)."""


class SimSiam(SiameseModel):
    """SimSiam: projector (3 layers, batch norm on the output) and a bottleneck predictor (2 layers)."""

    method = "simsiam"

    def __init__(self, encoder, n_features, hidden_dim, out_dim, layers, predictor_hidden_dim) -> None:
        super().__init__(encoder, n_features, build_mlp(n_features, hidden_dim, out_dim, layers, True))
        self.predictor = build_mlp(out_dim, predictor_hidden_dim, out_dim, 2, False)

    def pair_loss(self, view1, view2, features1, features2):
        z1, z2 = self.projector(features1), self.projector(features2)
        return simsiam_loss(self.predictor(z1), self.predictor(z2), z1, z2)


class BYOL(SiameseModel):
    """BYOL: an online encoder + projector + predictor and an EMA target encoder + projector.

    The target's decay rises from ``base_decay`` to 1 over training along
    ``1 − (1 − base_decay)·(cos(π·t/T) + 1)/2``, the schedule of Grill et
    al. (2020).
    """

    method = "byol"

    def __init__(self, encoder, n_features, hidden_dim, out_dim, layers, predictor_hidden_dim, base_decay) -> None:
        super().__init__(encoder, n_features, build_mlp(n_features, hidden_dim, out_dim, layers, False))
        self.predictor = build_mlp(out_dim, predictor_hidden_dim, out_dim, 2, False)
        self.target_encoder = copy.deepcopy(encoder)
        self.target_projector = copy.deepcopy(self.projector)
        for parameter in [*self.target_encoder.parameters(), *self.target_projector.parameters()]:
            parameter.requires_grad_(False)
        self.base_decay = float(base_decay)

    def target_decay(self, step: int, total_steps: int) -> float:
        """Return the EMA decay after ``step`` of ``total_steps`` optimiser steps."""
        progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
        return 1.0 - (1.0 - self.base_decay) * (torch.cos(torch.tensor(torch.pi * progress)).item() + 1.0) / 2.0

    def pair_loss(self, view1, view2, features1, features2):
        p1, p2 = self.predictor(self.projector(features1)), self.predictor(self.projector(features2))
        with torch.no_grad():
            t1 = self.target_projector(self.target_encoder(view1))
            t2 = self.target_projector(self.target_encoder(view2))
        return 0.5 * byol_loss(p1, t2) + 0.5 * byol_loss(p2, t1)

    def after_step(self, step, total_steps):
        decay = self.target_decay(step, total_steps)
        ema_update(self.target_encoder, self.encoder, decay)
        ema_update(self.target_projector, self.projector, decay)


class SimCLR(SiameseModel):
    """SimCLR: a projector MLP and the NT-Xent loss at ``temperature``."""

    method = "simclr"

    def __init__(self, encoder, n_features, hidden_dim, out_dim, layers, temperature) -> None:
        super().__init__(encoder, n_features, build_mlp(n_features, hidden_dim, out_dim, layers, False))
        self.temperature = float(temperature)

    def pair_loss(self, view1, view2, features1, features2):
        return nt_xent_loss(self.projector(features1), self.projector(features2), self.temperature)


def build_ssl_model(params: Mapping[str, Any]) -> SiameseModel:
    """Build the self-supervised model named by ``params["method"]`` on a fresh ResNet-18 encoder.

    Args:
        params: The ``pretraining`` parameters: ``method`` (one of
            ``METHODS``), ``in_channels``, ``projector`` (``hidden_dim``,
            ``out_dim``, ``layers``), ``predictor.hidden_dim`` (SimSiam,
            BYOL), ``byol.base_decay`` and ``simclr.temperature``.

    Raises:
        ValueError: Unknown method.
    """
    method = params.get("method", "simsiam")
    hidden_dim, out_dim, layers, predictor_hidden_dim, in_channels = _dims(params)
    encoder = build_resnet18_encoder(in_channels)
    n_features = ENCODER_FEATURES["resnet18"]
    if method == "simsiam":
        return SimSiam(encoder, n_features, hidden_dim, out_dim, layers, predictor_hidden_dim)
    if method == "byol":
        base_decay = float(params.get("byol", {}).get("base_decay", 0.99))
        return BYOL(encoder, n_features, hidden_dim, out_dim, layers, predictor_hidden_dim, base_decay)
    if method == "simclr":
        temperature = float(params.get("simclr", {}).get("temperature", 0.1))
        return SimCLR(encoder, n_features, hidden_dim, out_dim, layers, temperature)
    raise ValueError(f"pre-training method {method!r} is not supported; use one of {METHODS}")


def region_agreement_loss(pooled1: torch.Tensor, pooled2: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Return the symmetric negative cosine between mask-pooled features of two views.

    Each side is compared with the other side under a stop-gradient, as in
    SimSiam. Only slices with lesion area in both views (``valid``) count;
    with none, the loss is 0 and keeps the graph.
    """
    if not bool(valid.any()):
        return pooled1.sum() * 0.0
    return 0.5 * negative_cosine(pooled1[valid], pooled2[valid]) + 0.5 * negative_cosine(pooled2[valid], pooled1[valid])
