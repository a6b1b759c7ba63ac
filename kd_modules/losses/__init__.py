"""KD losses: each is a ``KDLoss`` called as ``loss(student_out, teacher_out, lens, targets)``."""

from .base import KDLoss, align_time, length_mask
from .embeddings import EmbeddingKD
from .features import IUSP, FitNetsHint, SimilarityPreserving
from .inversion import InfoNCE, bn_statistics_gap, info_nce, l2_prior, total_variation
from .logits import DecoupledKD, HintonKD, SigmoidKD
from .multilevel import MultiLevelKD
from .registry import LOSSES, build_loss

__all__ = [
    "IUSP",
    "LOSSES",
    "DecoupledKD",
    "EmbeddingKD",
    "FitNetsHint",
    "HintonKD",
    "InfoNCE",
    "KDLoss",
    "MultiLevelKD",
    "SigmoidKD",
    "SimilarityPreserving",
    "align_time",
    "bn_statistics_gap",
    "build_loss",
    "info_nce",
    "l2_prior",
    "length_mask",
    "total_variation",
]
