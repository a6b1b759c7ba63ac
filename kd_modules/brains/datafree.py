"""Data-free KD: a student learns from a teacher on synthetic features only, and is validated and
tested on real clips.

Training batches come from a synthetic pool (``kd_modules.synthesis``) as ``feats`` (log-Mel
``(B, T, F)`` padded, with relative lengths) and ``label_id`` (the synthesis targets); validation
and test batches are real clips (``sig``) through the usual front end. The loss on synthetic
batches is the KD terms (``kd_losses``), plus ``synthetic_ce_weight`` × CE on the synthesis
targets (0 by default: the teacher's soft labels carry the knowledge). A tagger's pool
(:class:`DataFreeTaggingBrain`) has multi-hot ``targets`` ``(B, C)`` instead, and
``synthetic_bce_weight`` × BCE on them.
"""

from __future__ import annotations

import speechbrain as sb
import torch
import torch.nn.functional as F
from torch import nn

from kd_modules.brains.classification import ClassificationBrain
from kd_modules.brains.tagging import TaggingBrain


def check_distinct(student: nn.Module, teacher: nn.Module) -> None:
    """Raise ``ValueError`` if the student is the teacher or shares any parameter with it."""
    if student is teacher:
        raise ValueError("The student is the teacher itself: distil into a separate model")
    teacher_storage = {p.data_ptr() for p in teacher.parameters()}
    shared = [name for name, p in student.named_parameters() if p.data_ptr() in teacher_storage]
    if shared:
        raise ValueError(
            f"The student shares {len(shared)} parameter(s) with the teacher (first: "
            f"{shared[0]}): training it would change the frozen teacher"
        )


class PoolTraining:
    """A task brain trained on synthetic ``feats``, evaluated on real ``sig`` batches (a mixin
    before the task brain: :class:`DataFreeBrain`, :class:`DataFreeTaggingBrain`)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not self.distilling:
            raise ValueError(
                "Data-free KD needs KD losses (kd_losses): the pool has no labels but the teacher's"
            )
        if self.teacher is not None:
            check_distinct(self.modules.model, self.teacher.model)

    def compute_features(self, batch, stage: sb.Stage = sb.Stage.TEST):
        """Synthetic features as stored (training), or real clips through the front end."""
        if stage == sb.Stage.TRAIN:
            feats, lens = batch.feats
            return feats, lens
        return super().compute_features(batch, stage)

    def compute_objectives(self, predictions, batch, stage: sb.Stage) -> torch.Tensor:
        """KD terms (+ the weighted task loss on the synthesis targets) in training; the task's
        loss and metrics else."""
        if stage != sb.Stage.TRAIN:
            return super().compute_objectives(predictions, batch, stage)
        student, teacher, lens, _ = predictions  # a pool's teacher is never integrated
        loss = self.distill_loss(student, teacher, lens, None)
        name = self.synthetic_term
        weight = float(getattr(self.hparams, f"{name}_weight", 0.0))
        if weight > 0:
            term = self.synthetic_loss(student["logits"], batch)
            self.log_terms(**{name: term})
            loss = loss + weight * term
        return loss


class DataFreeBrain(PoolTraining, ClassificationBrain):
    """A ClassificationBrain on a pool of classes (``label_id``); CE as its synthetic term."""

    synthetic_term = "synthetic_ce"

    def synthetic_loss(self, logits: torch.Tensor, batch) -> torch.Tensor:
        """CE of the student's logits (B, C) on the synthesis classes (B,)."""
        return F.cross_entropy(logits, batch.label_id.data.reshape(-1))


class DataFreeTaggingBrain(PoolTraining, TaggingBrain):
    """A TaggingBrain on a pool of tag sets (``targets`` (B, C)); BCE as its synthetic term."""

    synthetic_term = "synthetic_bce"

    def synthetic_loss(self, logits: torch.Tensor, batch) -> torch.Tensor:
        """Mean BCE of the student's logits (B, C) on the synthesis tag sets (B, C) in {0, 1}."""
        return F.binary_cross_entropy_with_logits(logits.float(), batch.targets.data.float())
