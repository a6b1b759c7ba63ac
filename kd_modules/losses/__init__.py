"""KD losses: each is a ``KDLoss`` called as ``loss(student_out, teacher_out, lens, targets)``.

A recipe's ``hparams/kd/<method>.yaml`` builds its terms by class (``kd_losses: {kd:
!new:kd_modules.losses.HintonKD {tau: ...}}``): the YAML names the class and its arguments, and the
term's key (``kd``) names it in the logs; ``--methods`` on ``run.sh`` picks that YAML file.
"""

from .base import KDLoss, align_time, length_mask
from .embeddings import EmbeddingKD
from .features import IUSP, FitNetsHint, SimilarityPreserving
from .inversion import InfoNCE, bn_statistics_gap, info_nce, l2_prior, total_variation
from .logits import DecoupledKD, HintonKD, SigmoidKD
from .multilevel import MultiLevelKD

__all__ = [
    "IUSP",
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
    "info_nce",
    "l2_prior",
    "length_mask",
    "total_variation",
]
