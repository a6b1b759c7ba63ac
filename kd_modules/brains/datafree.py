"""Data-free KD: a student learns from a teacher on synthetic features only, and is validated and
tested on real clips.

Training batches come from a synthetic pool (``kd_modules.synthesis``) as ``feats`` (log-Mel
``(B, T, F)`` padded, with relative lengths) and ``label_id`` (the synthesis targets); validation
and test batches are real clips (``sig``) through the usual front end. The loss on synthetic
batches is the KD terms (``kd_losses``), plus ``synthetic_ce_weight`` × CE on the synthesis
targets (0 by default: the teacher's soft labels carry the knowledge).
"""

from __future__ import annotations

import speechbrain as sb
import torch
import torch.nn.functional as F
from torch import nn

from kd_modules.brains.classification import ClassificationBrain


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


class DataFreeBrain(ClassificationBrain):
    """A ClassificationBrain trained on synthetic ``feats``, evaluated on real ``sig`` batches."""

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
        """KD terms (+ weighted CE on the synthesis targets) in training; CE and accuracy else."""
        if stage != sb.Stage.TRAIN:
            return super().compute_objectives(predictions, batch, stage)
        student, teacher, lens, _ = predictions  # a pool's teacher is never integrated
        loss = self.distill_loss(student, teacher, lens, None)
        weight = float(getattr(self.hparams, "synthetic_ce_weight", 0.0))
        if weight > 0:
            targets = batch.label_id.data.reshape(-1)
            ce = F.cross_entropy(student["logits"], targets)
            self.log_terms(synthetic_ce=ce)
            loss = loss + weight * ce
        return loss
