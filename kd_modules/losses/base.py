"""The KD loss contract and the helpers every loss shares (masks, time alignment, projections).

A KD loss is an ``nn.Module`` called as ``loss(student_out, teacher_out, lens, targets)`` and
returning a scalar. Keeping masking and time alignment here means every loss treats padding the same
way: padded frames never enter a loss. Every loss reduces in float32 (:func:`fp32`) whatever
precision the models ran in, so its result is float32 under fp16/bf16 AMP too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class KDLoss(nn.Module):
    """Base class of every knowledge-distillation loss.

    ``forward(student_out, teacher_out, lens, targets) -> Tensor`` (scalar), where

    - ``student_out`` / ``teacher_out``: ``dict[str, Tensor]`` built from the models' outputs and
      their feature taps. Standard keys: ``"logits"`` (B, C), ``"embedding"`` (B, E); tapped
      features under YAML-chosen names, frame-level ones (B, T, D) (time second, as in SpeechBrain)
      or 4-D CNN maps. The loss reads ``self.key`` (a constructor argument).
    - ``lens``: SpeechBrain relative lengths (B,) in (0, 1], or None when nothing is padded.
    - ``targets``: the task labels, or None; most KD losses ignore them.

    Trainable adapters (regressors, projections) are parameters of the loss itself, so adding the
    loss to the Brain's modules optimises and checkpoints them. The teacher side is not detached:
    the caller decides (DistillBrain runs the teacher under ``no_grad``; adversarial synthesis needs
    gradients through it).
    """

    key: str

    def fetch(
        self,
        student_out: dict[str, Tensor],
        teacher_out: dict[str, Tensor],
        key: str | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``(student_out[key], teacher_out[key])``, key defaulting to ``self.key``; clear error
        naming the loss, the key and the available keys when one side lacks it."""
        key = self.key if key is None else key
        for side, out in (("student", student_out), ("teacher", teacher_out)):
            if key not in out:
                raise KeyError(
                    f"{type(self).__name__} reads key {key!r}, missing from the {side} "
                    f"outputs (available: {sorted(out)})"
                )
        return student_out[key], teacher_out[key]

    def forward(
        self,
        student_out: dict[str, Tensor],
        teacher_out: dict[str, Tensor],
        lens: Tensor | None = None,
        targets: Tensor | None = None,
    ) -> Tensor:
        raise NotImplementedError


def length_mask(lens: Tensor, T: int) -> Tensor:
    """(B, T) boolean mask of valid frames from relative lengths ``lens`` (B,).

    Valid frames are ``round(lens * T)`` as in SpeechBrain's ``length_to_mask`` usage, clamped to
    at least one frame so that per-utterance normalisations never divide by zero. Counted in
    float32: in fp16, ``lens * T`` snaps to a 0.25-frame grid from 256 frames on (0.5 from 512),
    and round() then often lands one frame off.
    """
    n = torch.round(fp32(lens) * T).clamp(1, T)
    return torch.arange(T, device=lens.device) < n.unsqueeze(1)


def frame_mask(x: Tensor, lens: Tensor, time_dim: int = 1) -> Tensor:
    """Float mask of x's valid frames, broadcastable to x (size 1 on all but batch and time)."""
    mask = length_mask(lens, x.shape[time_dim]).to(x.dtype)
    shape = [1] * x.ndim
    shape[0], shape[time_dim] = x.shape[0], x.shape[time_dim]
    return mask.reshape(shape)


def pool_time(x: Tensor, length: int, lens: Tensor | None = None, time_dim: int = 1) -> Tensor:
    """Average-pool x along ``time_dim`` to ``length`` frames (adaptive windows).

    With ``lens`` the average runs over valid frames only, so padding never leaks into a pooled
    frame (a window holding no valid frame gives 0, and lies in the padded part anyway). The
    averages are taken in float32 and returned in x's dtype (an average never leaves x's range).
    """
    T = x.shape[time_dim]
    if T == length:
        return x
    moved = x.movedim(time_dim, -1)
    flat = fp32(moved.reshape(x.shape[0], -1, T))
    if lens is None:
        pooled = F.adaptive_avg_pool1d(flat, length)
    else:
        mask = length_mask(lens, T).to(flat.dtype).unsqueeze(1)
        num = F.adaptive_avg_pool1d(flat * mask, length)
        den = F.adaptive_avg_pool1d(mask, length)
        pooled = num / den.clamp_min(torch.finfo(den.dtype).tiny)
    return pooled.to(x.dtype).reshape(*moved.shape[:-1], length).movedim(-1, time_dim)


def align_time(
    a: Tensor, b: Tensor, lens: Tensor | None = None, time_dim: int = 1
) -> tuple[Tensor, Tensor]:
    """Give a and b the same number of frames by average-pooling the longer to the shorter."""
    length = min(a.shape[time_dim], b.shape[time_dim])
    return pool_time(a, length, lens, time_dim), pool_time(b, length, lens, time_dim)


def as_2d(x: Tensor, name: str) -> Tensor:
    """Utterance-level tensor as (B, N): accepts (B, N) and SpeechBrain's (B, 1, N)."""
    if x.ndim == 3 and x.shape[1] == 1:
        x = x.squeeze(1)
    if x.ndim != 2:
        raise ValueError(f"{name} must be (B, N) or (B, 1, N), got shape {tuple(x.shape)}")
    return x


def projection(student_dim: int | None, teacher_dim: int | None) -> nn.Module:
    """Linear map student → teacher size; identity when the sizes are equal (or not given)."""
    if student_dim is None or teacher_dim is None or student_dim == teacher_dim:
        return nn.Identity()
    return nn.Linear(student_dim, teacher_dim)


def fp32(x: Tensor) -> Tensor:
    """x in at least float32: fp16 and bf16 are upcast, float32 and float64 kept as they are.

    Losses take their sums, means and normalisers in float32 (autograd casts the gradient back to
    x's dtype): in fp16 a sum of B·T·D squared errors, or a squared frame count (T² > 65504 from
    T = 256 on), overflows to inf; bf16 keeps 8 significant bits, about 2 decimal digits.
    """
    return x.to(torch.promote_types(x.dtype, torch.float32))


def fp32_matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` in (at least) float32 with autocast off.

    Similarity (Gram) matrices overflow in fp16 under AMP: a row's squared norm is about T·C
    (e.g. 500 frames × 768 channels ≫ 65504), and products of small probabilities underflow.
    """
    with torch.autocast(a.device.type, enabled=False):
        return fp32(a) @ fp32(b)
