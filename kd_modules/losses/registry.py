"""Name → loss class, so YAML and the ``--methods`` option can pick a KD loss by a short name."""

from __future__ import annotations

from .base import KDLoss
from .embeddings import EmbeddingKD
from .features import IUSP, FitNetsHint, SimilarityPreserving
from .inversion import InfoNCE
from .logits import DecoupledKD, HintonKD, SigmoidKD
from .multilevel import MultiLevelKD

LOSSES: dict[str, type[KDLoss]] = {
    "kd": HintonKD,
    "sigmoid_kd": SigmoidKD,
    "dkd": DecoupledKD,
    "fitnets": FitNetsHint,
    "sp": SimilarityPreserving,
    "iusp": IUSP,
    "embedding": EmbeddingKD,
    "mlkd": MultiLevelKD,
    "infonce": InfoNCE,
}


def build_loss(name: str, **kwargs) -> KDLoss:
    """Instantiate the loss registered as ``name`` with its constructor ``kwargs``."""
    if name not in LOSSES:
        raise ValueError(f"unknown KD loss {name!r}; valid names: {', '.join(sorted(LOSSES))}")
    return LOSSES[name](**kwargs)
