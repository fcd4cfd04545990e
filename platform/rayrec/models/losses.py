"""Ranking losses over a (B, C) score matrix with a validity mask (candidate 0 = positive)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rayrec.models.config import LossKind


def ranking_loss(
    kind: LossKind, scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """bce: click/like per candidate; mse: rating regression; listwise: softmax cross-entropy."""
    scores, labels = scores.float(), labels.float()
    if kind == "bce":
        per = F.binary_cross_entropy_with_logits(scores, labels.clamp(0, 1), reduction="none")
        return per[mask].mean()
    if kind == "mse":
        return F.mse_loss(scores[mask], labels[mask])
    if kind == "listwise":
        logp = torch.log_softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        target = (labels.clamp(min=0) * mask).float()
        target = target / target.sum(-1, keepdim=True).clamp(min=1e-12)
        return -(target * logp.masked_fill(~mask, 0.0)).sum(-1).mean()
    raise ValueError(f"unknown loss {kind!r}")
