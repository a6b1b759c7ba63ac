"""Our models in the module layout of SpeechBrain's ``EncoderClassifier``.

``EncoderClassifier`` runs ``embedding_model(feats, wav_lens)`` and then
``classifier(embedding)``. Our models compute both at once (``model(feats, lens) ->
{"embedding", "logits", ...}``), so a run exported to the hub format
(:mod:`kd_modules.hub.export`) builds its model once and wraps it twice: :class:`HubEmbedding`
returns the model's embedding, :class:`HubClassifier` its logits from that embedding
(:func:`logits_from_embedding`: the linear head, the speaker model's scaled cosine, or an
ensemble's members' heads averaged in probability). Both share the one model, whose weights are
the run's checkpoint as it is.
"""

from __future__ import annotations

import torch
from torch import nn

from kd_modules.models.ensemble import Ensemble, mean_probability_logits
from kd_modules.models.speaker import SpeakerEmbeddingModel


class NoClassifier(TypeError):
    """A model whose logits are not a function of its embedding alone; names the model."""


def has_classifier(model: nn.Module) -> bool:
    """Whether :func:`logits_from_embedding` knows ``model``'s classifier."""
    if isinstance(model, Ensemble):
        return all(has_classifier(member) for member in model.members)
    return isinstance(model, SpeakerEmbeddingModel) or isinstance(
        getattr(model, "head", None), nn.Module
    )


def logits_from_embedding(model: nn.Module, embedding: torch.Tensor) -> torch.Tensor:
    """``model``'s logits ``(B, C)`` from its own embedding ``(B, E)``, as its forward gives them.

    An :class:`Ensemble`'s embedding is its members' side by side, each the same width.
    """
    if isinstance(model, Ensemble):
        chunks = embedding.chunk(len(model.members), dim=-1)
        member_logits = [logits_from_embedding(m, e) for m, e in zip(model.members, chunks)]
        return mean_probability_logits(torch.stack(member_logits))
    if isinstance(model, SpeakerEmbeddingModel):
        return model.classify(embedding)["logits"]
    if not has_classifier(model):
        raise NoClassifier(f"{type(model).__name__} has no classifier on its embedding")
    return model.head(embedding)


class HubEmbedding(nn.Module):
    """``embedding_model``: ``(feats (B, T, F), lens (B,)) -> embedding (B, 1, E)``, the shape
    of SpeechBrain's hub encoders."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, feats: torch.Tensor, lens: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(feats, lens)["embedding"].unsqueeze(1)


class HubClassifier(nn.Module):
    """``classifier``: embedding ``(B, 1, E)`` or ``(B, E)`` -> logits ``(B, 1, C)`` or ``(B, C)``
    (``EncoderClassifier.classify_batch`` squeezes the 1 away); the model's own logits, not
    probabilities."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not has_classifier(model):
            raise NoClassifier(f"{type(model).__name__} has no classifier on its embedding")
        self.model = model

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        if embedding.dim() == 3:
            return logits_from_embedding(self.model, embedding.squeeze(1)).unsqueeze(1)
        return logits_from_embedding(self.model, embedding)
