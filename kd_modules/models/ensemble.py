"""An ensemble of independently trained classifiers: the teacher of Hinton et al.'s KD paper.

On a few hundred training clips a single large network can lose to the small student it should
teach (the recipe's UrbanSound8K measurements: a 1.1 M-parameter x-vector below a 51 k one), while
an ensemble of small networks reliably beats each of its members. :class:`Ensemble` holds
``n_members`` copies of one member architecture, each re-initialised from the global RNG (so the
run's seed fixes them), and averages them in probability. In training each member learns from the
labels alone: the Brain's cross-entropy reads ``member_logits`` and averages the members' losses
(:func:`classification_loss`), so no member adapts to the others, as with separately trained
networks; the members only share batches and augmentation.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn


class Ensemble(nn.Module):
    """``n_members`` classifiers of one architecture, averaged in probability.

    Arguments
    ---------
    member : nn.Module
        A classifier ``member(feats (B, T, F), lens (B,)) -> {"logits": (B, C), "embedding":
        (B, E), ...}``; it becomes the first member, and deep copies of it, re-initialised, the
        others.
    n_members : int
        M, the number of members (>= 1).
    """

    def __init__(self, member: nn.Module, n_members: int) -> None:
        super().__init__()
        if n_members < 1:
            raise ValueError(f"an ensemble needs at least one member, not {n_members}")
        copies = [copy.deepcopy(member) for _ in range(n_members - 1)]
        for other in copies:
            for module in other.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        self.members = nn.ModuleList([member, *copies])

    def forward(self, feats: torch.Tensor, lens: torch.Tensor | None = None) -> dict:
        """``{"logits": (B, C), "embedding": (B, M·E)}``; in training also ``member_logits``
        ``(M, B, C)``.

        ``logits`` are the log of the members' mean probabilities, so a softmax of them is the
        ensemble's prediction and KD at temperature τ softens it like any logits. The embedding is
        the members' embeddings side by side. ``member_logits`` exist in training only: a teacher
        (always in eval mode) and its cache see just the ensemble's outputs.
        """
        outputs = [member(feats, lens) for member in self.members]
        member_logits = torch.stack([out["logits"] for out in outputs])
        result = {
            "logits": mean_probability_logits(member_logits),
            "embedding": torch.cat([out["embedding"] for out in outputs], dim=-1),
        }
        if self.training:
            result["member_logits"] = member_logits
        return result


def mean_probability_logits(member_logits: torch.Tensor) -> torch.Tensor:
    """The log of the members' mean probability ``(B, C)`` from their logits ``(M, B, C)``,
    computed in float32 and returned in the logits' dtype."""
    log_probs = torch.logsumexp(F.log_softmax(member_logits.float(), dim=-1), dim=0)
    return (log_probs - math.log(member_logits.shape[0])).to(member_logits.dtype)


def classification_loss(
    outputs: dict[str, torch.Tensor], targets: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Cross-entropy of a classifier's outputs against class ids ``targets`` (B,).

    For an :class:`Ensemble` in training (outputs with ``member_logits`` (M, B, C)) the mean of
    its members' cross-entropies, so each member learns from the labels alone; otherwise the
    cross-entropy of ``logits`` (B, C).
    """
    member_logits = outputs.get("member_logits")
    if member_logits is None:
        return F.cross_entropy(outputs["logits"], targets, label_smoothing=label_smoothing)
    losses = [
        F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
        for logits in member_logits
    ]
    return torch.stack(losses).mean()
