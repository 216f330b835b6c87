"""Losses as in TorchEasyRec's RankModel.

- binary cross-entropy on ``logits [B]`` with label smoothing ``y * (1 - s) + 0.5 * s``;
- softmax cross-entropy on ``logits [B, C]`` with integer labels ``[B]``;
- L2 (mean squared error) on ``y [B]``.

With sample weights ``w [B]`` the per-sample losses are weighted by ``w / mean(w)`` (weights
normalised to mean 1) and averaged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.config import LossConfig


def compute_loss(
    predictions: dict[str, torch.Tensor],
    labels: torch.Tensor,
    loss: LossConfig,
    sample_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The scalar training loss of one batch."""
    kind = loss.kind
    if kind == "binary_cross_entropy":
        s = loss.binary_cross_entropy.label_smoothing
        target = labels.to(predictions["logits"].dtype)
        if s > 0:
            target = target * (1.0 - s) + 0.5 * s
        per_sample = F.binary_cross_entropy_with_logits(
            predictions["logits"], target, reduction="none"
        )
    elif kind == "softmax_cross_entropy":
        per_sample = F.cross_entropy(
            predictions["logits"],
            labels.long(),
            reduction="none",
            label_smoothing=loss.softmax_cross_entropy.label_smoothing,
        )
    else:
        per_sample = (predictions["y"] - labels.to(predictions["y"].dtype)).square()
    if sample_weights is None:
        return per_sample.mean()
    w = sample_weights.to(per_sample.dtype)
    mean_w = w.mean()
    w = torch.where(mean_w > 0, w / mean_w, torch.zeros_like(w))
    return (per_sample * w).mean()
