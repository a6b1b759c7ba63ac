"""Model-inversion losses: InfoNCE over two views, and the priors of DeepInversion-style synthesis.

- :class:`InfoNCE`: the contrastive loss of CMI and FRAMI. Two views of each sample are positives;
  every other sample of the batch (in the other view) and every entry of a memory bank are
  negatives. It follows the KD-loss call convention, the two output dicts being the two views.
- :func:`total_variation`, :func:`l2_prior`: smoothness and energy priors on synthetic log-Mel
  spectrograms ``(B, T, F)``.
- :func:`bn_statistics_gap`: DeepInversion's feature-statistics term for one BatchNorm layer.

All values are computed in float32 whatever precision the models ran in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import KDLoss, as_2d, fp32


def info_nce(z_a: Tensor, z_b: Tensor, tau: float = 0.1, bank: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE between two views ``z_a``, ``z_b`` (B, D); ``bank`` (K, D) or None.

    Rows are L2-normalised first (so the loss ignores each vector's scale). For anchor ``z_a[i]``
    the logits are ``[z_a[i]·z_b[j] for j] ++ [z_a[i]·m_k for k]`` divided by ``tau``, and the
    target is ``j = i`` (the other view of the same sample); the same with the views swapped;
    ``L = (CE_a + CE_b) / 2``, each CE a mean over the batch. The bank is detached (earlier
    samples are negatives, not optimised).
    """
    if z_a.shape != z_b.shape or z_a.ndim != 2:
        raise ValueError(f"views must be (B, D) of one shape, got {z_a.shape} and {z_b.shape}")
    z_a, z_b = F.normalize(fp32(z_a), dim=1), F.normalize(fp32(z_b), dim=1)
    targets = torch.arange(z_a.shape[0], device=z_a.device)
    losses = []
    for anchor, other in ((z_a, z_b), (z_b, z_a)):
        logits = anchor @ other.T
        if bank is not None and bank.numel():
            negatives = F.normalize(fp32(bank.detach()), dim=1)
            logits = torch.cat([logits, anchor @ negatives.T], dim=1)
        losses.append(F.cross_entropy(logits / tau, targets))
    return (losses[0] + losses[1]) / 2


class InfoNCE(KDLoss):
    """:func:`info_nce` under the KD-loss convention: ``loss(view_a_out, view_b_out, bank=...)``.

    ``view_a_out[key]`` and ``view_b_out[key]`` are the two views' projections (B, D) (or
    (B, 1, D)); ``lens`` and ``targets`` are ignored (utterance-level features, label-free).
    """

    def __init__(self, tau: float = 0.1, key: str = "projection"):
        super().__init__()
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.tau, self.key = tau, key

    def forward(self, student_out, teacher_out, lens=None, targets=None, bank=None) -> Tensor:
        z_a, z_b = (as_2d(z, self.key) for z in self.fetch(student_out, teacher_out))
        return info_nce(z_a, z_b, self.tau, bank)


def total_variation(x: Tensor, power: int = 2) -> Tensor:
    """Mean |Δ|^power of ``x`` (B, T, F) between neighbouring frames plus between neighbouring
    bins: ``mean|x[:, t+1] − x[:, t]|^p + mean|x[:, :, f+1] − x[:, :, f]|^p``."""
    if x.ndim != 3:
        raise ValueError(f"total_variation expects (B, T, F), got shape {tuple(x.shape)}")
    if power not in (1, 2):
        raise ValueError(f"power must be 1 or 2, got {power}")
    x = fp32(x)
    d_time, d_freq = x.diff(dim=1).abs(), x.diff(dim=2).abs()
    return d_time.pow(power).mean() + d_freq.pow(power).mean()


def l2_prior(x: Tensor) -> Tensor:
    """Mean squared value of ``x``: keeps synthetic inputs from growing without bound."""
    return fp32(x).pow(2).mean()


def bn_statistics_gap(
    mean: Tensor, var: Tensor, running_mean: Tensor, running_var: Tensor
) -> Tensor:
    """``‖μ − μ̄‖₂ + ‖σ² − σ̄²‖₂`` for one BatchNorm layer (DeepInversion's R_BN term).

    ``mean``/``var`` (C,): the batch statistics of the layer's input (biased variance, as BatchNorm
    normalises with); ``running_mean``/``running_var`` (C,): the statistics it learnt in training.
    """
    return torch.linalg.vector_norm(fp32(mean) - fp32(running_mean)) + torch.linalg.vector_norm(
        fp32(var) - fp32(running_var)
    )
