"""Per-sample losses. The batch loss is always their mean, which lets the engine recompute the
loss of a perturbed model from the samples whose output changed only.

``loss`` is ``"mse"``, ``"cross_entropy"`` or a callable ``f(output, target) -> (N,)`` tensor of
per-sample losses.
"""
from __future__ import annotations

from typing import Callable, Union

import torch
import torch.nn.functional as F

from lib.core.names import LOSSES

LossSpec = Union[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]


def check_loss(loss: LossSpec) -> None:
    """``ValueError`` naming ``loss`` unless it is a known name or a callable."""
    if not (callable(loss) or loss in LOSSES):
        raise ValueError(f"loss: expected one of {LOSSES} or a callable, got {loss!r}")


def per_sample_loss(output: torch.Tensor, target: torch.Tensor, loss: LossSpec) -> torch.Tensor:
    """Per-sample losses over the leading (batch) dimensions of ``output``.

    * ``mse``: ``ℓ_n = mean_j (output_nj − target_nj)²``;
    * ``cross_entropy``: ``ℓ_n = −log softmax(output_n)[target_n]`` (integer class targets).

    ``output`` may carry extra leading dimensions (perturbed copies); ``target`` broadcasts.
    """
    if loss == "mse":
        diff = output - target
        return (diff * diff).mean(dim=-1)
    if loss == "cross_entropy":
        logits = output.reshape(-1, output.shape[-1])
        tgt = target.expand(output.shape[:-1]).reshape(-1)
        return F.cross_entropy(logits, tgt, reduction="none").reshape(output.shape[:-1])
    if callable(loss):
        return loss(output, target)
    check_loss(loss)
    raise AssertionError  # unreachable


def batch_loss(output: torch.Tensor, target: torch.Tensor, loss: LossSpec) -> torch.Tensor:
    """``L = mean_n ℓ_n``; raises ``FloatingPointError`` when it is not finite."""
    value = per_sample_loss(output, target, loss).mean()
    if not torch.isfinite(value):
        raise FloatingPointError(f"loss is not finite ({value.item()})")
    return value
