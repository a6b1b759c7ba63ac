"""Embedding distillation: match the student's utterance embedding to the teacher's."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import KDLoss, as_2d, fp32, projection


class EmbeddingKD(KDLoss):
    """Distance between the projected student embedding and the teacher embedding.

    Embeddings (B, E_s) and (B, E_t) (or (B, 1, E)); a learned linear projection E_s → E_t when the
    sizes differ, identity otherwise. ``distance="cosine"``: mean(1 − cos), blind to the scale of
    either embedding (what cosine scoring uses); ``"mse"``: mean squared error over all elements.
    Both in float32: a 512-dim embedding of entries about 12 already has a squared norm > 65504.
    """

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        distance: str = "cosine",
        key: str = "embedding",
    ):
        super().__init__()
        if distance not in ("cosine", "mse"):
            raise ValueError(f"distance must be 'cosine' or 'mse', got {distance!r}")
        self.distance, self.key = distance, key
        self.proj = projection(student_dim, teacher_dim)

    def forward(self, student_out, teacher_out, lens=None, targets=None) -> Tensor:
        e_s, e_t = (as_2d(e, self.key) for e in self.fetch(student_out, teacher_out))
        e_s, e_t = fp32(self.proj(e_s)), fp32(e_t)
        if self.distance == "cosine":
            return (1 - F.cosine_similarity(e_s, e_t, dim=-1)).mean()
        return F.mse_loss(e_s, e_t)
