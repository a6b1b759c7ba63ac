"""Model inversion for data-free KD: synthesise a teacher's inputs, keep them in an on-disk pool.

- :class:`Synthesizer`: the interface, ``synthesize(targets, frames) -> (B, T, F)``;
- :class:`DeepInversion`, :class:`CMI`, :class:`FRAMI`: the synthesisers (``base``,
  ``contrastive``), each optimising log-Mel inputs directly or through a :class:`FrameGenerator`;
- :class:`BatchNormStatistics`: the BatchNorm hooks (``hooks``);
- :func:`pool_plan` (classes), :func:`tag_set_plan` (a tagger's multi-hot tag sets),
  :class:`SyntheticPool`, :func:`synthesize_pool`: the pool (``pool``);
- :func:`embedding_diversity`: how diverse synthetic samples are (``measures``).

Nothing here knows a dataset: a teacher is any module ``(feats (B, T, F), lens) -> dict``.
"""

from kd_modules.synthesis.base import (
    DeepInversion,
    FrameGenerator,
    Synthesizer,
    frozen,
    inversion_task_loss,
)
from kd_modules.synthesis.contrastive import CMI, FRAMI, AudioViews, MemoryBank
from kd_modules.synthesis.hooks import BatchNormStatistics
from kd_modules.synthesis.measures import embedding_diversity
from kd_modules.synthesis.pool import (
    PoolBatch,
    SyntheticPool,
    pool_plan,
    synthesize_pool,
    tag_set_plan,
)

__all__ = [
    "CMI",
    "FRAMI",
    "AudioViews",
    "BatchNormStatistics",
    "DeepInversion",
    "FrameGenerator",
    "MemoryBank",
    "PoolBatch",
    "Synthesizer",
    "SyntheticPool",
    "embedding_diversity",
    "frozen",
    "inversion_task_loss",
    "pool_plan",
    "synthesize_pool",
    "tag_set_plan",
]
