"""A pooled-embedding classifier: frame encoder -> utterance embedding -> linear head.

The encoder is any SpeechBrain lobe that maps features ``(B, T, F)`` and relative lengths
``(B,)`` to an embedding ``(B, 1, E)`` or ``(B, E)`` (Xvector, ECAPA_TDNN, ...). Teachers and
students of a recipe share this wrapper, so KD losses always find ``logits`` and ``embedding``
under the same names, and feature taps address inner layers as ``encoder.<path>``. SpeechBrain
statistics pooling inside the encoder is swapped for :class:`FiniteStatisticsPooling` (same
outputs, no parameters), so that a very short clip in a batch cannot make the loss NaN, and its
``Conv1d`` layers for :class:`LengthAwareConv1d` (same parameters), so that a clip's outputs in a
padded batch are its outputs alone (what a teacher cache stores).
"""

from __future__ import annotations

import torch
from torch import nn

from kd_modules.models.padding import LengthAwareConv1d, batch_lengths, use_length_aware_convs
from kd_modules.models.pooling import use_finite_statistics_pooling


class EmbeddingClassifier(nn.Module):
    """Statistics-pooling classifier (TDNN / ECAPA style), as FRAMI's teachers and students.

    Arguments
    ---------
    encoder : nn.Module
        ``encoder(feats (B, T, F), lens (B,)) -> (B, 1, E) or (B, E)``.
    embedding_dim : int
        E, the size of the encoder's embedding.
    n_classes : int
        C, the number of output classes.
    """

    def __init__(self, encoder: nn.Module, embedding_dim: int, n_classes: int) -> None:
        super().__init__()
        self.encoder = use_length_aware_convs(use_finite_statistics_pooling(encoder))
        convs = [m for m in self.encoder.modules() if isinstance(m, LengthAwareConv1d)]
        self._length_aware = convs  # a plain list: not registered twice as submodules
        self.head = nn.Sequential(nn.LeakyReLU(), nn.Linear(embedding_dim, n_classes))

    def forward(self, feats: torch.Tensor, lens: torch.Tensor | None = None) -> dict:
        """Return ``{"logits": (B, C), "embedding": (B, E)}`` for features ``(B, T, F)``."""
        with batch_lengths(self._length_aware, lens):
            embedding = self.encoder(feats, lens)
        if embedding.dim() == 3:
            embedding = embedding.squeeze(1)
        return {"logits": self.head(embedding), "embedding": embedding}
