"""KD losses: each is a ``KDLoss`` called as ``loss(student_out, teacher_out, lens, targets)``."""

from .base import KDLoss, align_time, length_mask
from .embeddings import EmbeddingKD
from .features import IUSP, FitNetsHint, SimilarityPreserving
from .logits import HintonKD, SigmoidKD
from .multilevel import MultiLevelKD
from .registry import LOSSES, build_loss

__all__ = [
    "IUSP",
    "LOSSES",
    "EmbeddingKD",
    "FitNetsHint",
    "HintonKD",
    "KDLoss",
    "MultiLevelKD",
    "SigmoidKD",
    "SimilarityPreserving",
    "align_time",
    "build_loss",
    "length_mask",
]
