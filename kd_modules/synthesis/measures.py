"""How diverse synthetic samples are, as the teacher sees them."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def _groups(labels: Tensor) -> list[Tensor]:
    """Boolean masks (N,) of the samples of each class (labels (N,)), or of each tag's samples
    (multi-hot labels (N, C): a sample is in the group of every tag it carries)."""
    if labels.dim() == 1:
        return [labels == label for label in labels.unique()]
    return [labels[:, tag] > 0 for tag in range(labels.shape[1])]


def embedding_diversity(embeddings: Tensor, labels: Tensor) -> float:
    """Mean pairwise cosine distance ``1 − cos(e_i, e_j)`` between samples of the same class.

    ``embeddings`` (N, E) (e.g. the teacher's pooled embeddings of synthetic samples), ``labels``
    (N,), or multi-hot tag sets (N, C) (a tagger's pool: the groups are each tag's samples). For
    each class with at least two samples, the mean over its distinct pairs; then the mean over
    those classes. 0 when every sample of a class maps to one direction; higher is more diverse.
    Within-class, so that merely hitting different classes does not count as diversity.
    """
    values = []
    for group in _groups(labels):
        e = F.normalize(embeddings[group].double(), dim=1)
        n = e.shape[0]
        if n < 2:
            continue
        cos = e @ e.T
        values.append(float((n * n - cos.sum()) / (n * (n - 1))))  # diagonal cos = 1 adds 0
    if not values:
        raise ValueError("embedding_diversity needs a class with at least two samples")
    return sum(values) / len(values)
