"""Feature and relation KD: FitNets hints, SP (batch similarity), IUSP (frame similarity)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import KDLoss, align_time, fp32, fp32_matmul, frame_mask, length_mask

_LAYOUT_DIMS = {"channels_last": (-1, 1), "channels_first": (1, 2)}  # (channel dim, time dim)
_IUSP_TIME_DIM = {"btd": 1, "bct": 2, "bctf": 2}


class FitNetsHint(KDLoss):
    """FitNets hint: MSE between the teacher hint and a learned regressor of the student feature.

    ``layout="channels_last"``: features (B, D), (B, T, D) or (B, T, F, D), the regressor is a
    Linear on the last dim. ``"channels_first"``: conv maps (B, C, T) or (B, C, T, F), the regressor
    is a 1×1 convolution, written as the same Linear applied on dim 1. The time axis is dim 1
    (channels_last) or dim 2 (channels_first): when teacher and student differ in frames the longer
    is average-pooled to the shorter, and with ``lens`` the mean runs over valid frames only.
    The regressor runs in the model's precision, the squared errors and their mean in float32.
    """

    def __init__(self, key: str, student_dim: int, teacher_dim: int, layout: str = "channels_last"):
        super().__init__()
        if layout not in _LAYOUT_DIMS:
            raise ValueError(f"layout must be one of {sorted(_LAYOUT_DIMS)}, got {layout!r}")
        self.key, self.layout = key, layout
        self.channel_dim, self.time_dim = _LAYOUT_DIMS[layout]
        self.regressor = nn.Linear(student_dim, teacher_dim)

    def forward(self, student_out, teacher_out, lens=None, targets=None) -> Tensor:
        s, t = self.fetch(student_out, teacher_out)
        frame_level = s.ndim >= 3
        if frame_level:
            s, t = align_time(s, t, lens, self.time_dim)
        s = self.regressor(s.movedim(self.channel_dim, -1)).movedim(-1, self.channel_dim)
        s, t = fp32(s), fp32(t)
        if not (frame_level and lens is not None):
            return F.mse_loss(s, t)
        sq = (s - t).pow(2)
        mask = frame_mask(sq, lens, self.time_dim).expand_as(sq)
        return (sq * mask).sum() / mask.sum()


class SimilarityPreserving(KDLoss):
    """SP (Tung & Mori, ICCV 2019): match the batch's sample-similarity matrices.

    Each sample's activation is flattened to a row of Q (B, D*) (D* may differ between teacher and
    student); ``G = row_l2_normalise(Q Qᵀ)`` (B, B); ``L = ‖G_t − G_s‖²_F / B²``. For frame-level
    features with ``lens``, padded frames along ``time_dim`` are zeroed first, so they add nothing
    to Q Qᵀ. Row normalisation makes G blind to a positive rescaling of the whole batch; it is not
    blind to rescaling one sample (that scales its row and its column of Q Qᵀ).
    """

    def __init__(self, key: str, time_dim: int = 1):
        super().__init__()
        self.key, self.time_dim = key, time_dim

    def _gram(self, x: Tensor, lens: Tensor | None) -> Tensor:
        if lens is not None and x.ndim >= 3:
            x = x * frame_mask(x, lens, self.time_dim)
        q = x.flatten(1)
        return F.normalize(fp32_matmul(q, q.T), dim=1)

    def forward(self, student_out, teacher_out, lens=None, targets=None) -> Tensor:
        s, t = self.fetch(student_out, teacher_out)
        diff = self._gram(t, lens) - self._gram(s, lens)
        return diff.pow(2).sum() / s.shape[0] ** 2


class IUSP(KDLoss):
    """IUSP (Chang et al., Interspeech 2020): SP over the frames of each utterance.

    Per utterance n a frame matrix Q(n) (T, D): rows are time frames, columns all other dims
    flattened. ``layout="btd"``: features (B, T, D); ``"bct"``: channels-first TDNN frames
    (B, C, T), as ECAPA's blocks give them; ``"bctf"``: CNN maps (B, C, T, F) → T × (C·F);
    ``time_dim`` overrides the layout's time axis for any other arrangement. D may differ between
    teacher and student; if T differs the longer is average-pooled to the shorter.
    ``G(n) = row_l2_normalise(Q Qᵀ)`` (T, T) with padded frames zeroed out of rows and columns;
    ``L = mean_n ‖G_t(n) − G_s(n)‖²_F / T_n²``, T_n the valid frames of utterance n.
    Batched with masks (B, T, T), no loop over utterances; G, T_n and L in float32.
    """

    def __init__(self, key: str, layout: str = "btd", time_dim: int | None = None):
        super().__init__()
        if layout not in _IUSP_TIME_DIM:
            raise ValueError(f"layout must be one of {sorted(_IUSP_TIME_DIM)}, got {layout!r}")
        self.key, self.layout = key, layout
        self.time_dim = _IUSP_TIME_DIM[layout] if time_dim is None else time_dim

    def forward(self, student_out, teacher_out, lens=None, targets=None) -> Tensor:
        s, t = self.fetch(student_out, teacher_out)
        s, t = align_time(s, t, lens, self.time_dim)
        s, t = (x.movedim(self.time_dim, 1).flatten(2) for x in (s, t))  # (B, T, D)
        B, T = s.shape[:2]
        if lens is None:
            n_valid = torch.full((B,), float(T), device=s.device, dtype=torch.float32)
        else:
            mask = length_mask(lens, T)
            s, t = s * mask.unsqueeze(-1).to(s.dtype), t * mask.unsqueeze(-1).to(t.dtype)
            n_valid = mask.sum(1, dtype=torch.float32)
        g_s = F.normalize(fp32_matmul(s, s.transpose(1, 2)), dim=2)
        g_t = F.normalize(fp32_matmul(t, t.transpose(1, 2)), dim=2)
        return ((g_t - g_s).pow(2).sum((1, 2)) / n_valid**2).mean()
