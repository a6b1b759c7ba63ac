"""A speaker-embedding model: frame encoder -> utterance embedding -> cosine (AAM) classifier.

Speaker verification trains a classifier over the training speakers with an additive angular
margin (AAM) softmax and keeps only the embedding for scoring. Teachers and students of the
speaker recipe share this wrapper, so KD losses always find ``embedding``, ``cosine`` and
``logits`` under the same names, and taps address inner layers as ``encoder.<path>``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SpeakerEmbeddingModel(nn.Module):
    """ECAPA-TDNN (or any SpeechBrain embedding lobe) with a cosine classifier.

    Arguments
    ---------
    encoder : nn.Module
        ``encoder(feats (B, T, F), lens (B,)) -> (B, 1, E) or (B, E)`` (e.g.
        ``speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN``).
    embedding_dim : int
        E, the size of the encoder's embedding.
    n_speakers : int
        C, the number of training speakers (the classifier's classes).
    scale : float
        s of the AAM softmax: ``logits = s · cosine`` (no margin), what softmax-based KD losses
        read; 30 as in SpeechBrain's VoxCeleb recipe.
    """

    def __init__(
        self, encoder: nn.Module, embedding_dim: int, n_speakers: int, scale: float = 30.0
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.weight = nn.Parameter(torch.empty(n_speakers, embedding_dim))
        nn.init.xavier_uniform_(self.weight)
        self.scale = float(scale)

    def forward(self, feats: torch.Tensor, lens: torch.Tensor | None = None) -> dict:
        """``{"embedding": (B, E), "cosine": (B, C), "logits": (B, C)}`` for ``(B, T, F)`` features.

        ``cosine`` is the cosine between the embedding and each speaker's weight vector (the
        AAM loss adds its margin to it; IML-KD attributes the true speaker's cosine), and
        ``logits`` is ``scale · cosine``.
        """
        embedding = self.encoder(feats, lens)
        if embedding.dim() == 3:
            embedding = embedding.squeeze(1)
        return {"embedding": embedding, **self.classify(embedding)}

    def classify(self, embedding: torch.Tensor) -> dict:
        """``{"cosine": (B, C), "logits": (B, C)}`` of embeddings ``(B, E)``."""
        cosine = F.linear(F.normalize(embedding.float()), F.normalize(self.weight.float()))
        return {"cosine": cosine, "logits": self.scale * cosine}
