"""Single-label classification (sound classification, digits): cross-entropy + KD terms.

Expects batches with ``sig`` (waveforms ``(B, S)`` + relative lengths) and ``label_id``
(``(B, 1)`` class ids), and the hparams of :class:`~kd_modules.brains.task.TaskBrain` (front end,
augmentation, mixup: inputs, teacher outputs and the cross-entropy's targets share λ and the
pairing), optionally ``label_smoothing``. Validation accuracy selects the checkpoint. A subclass
with other classes and another class loss (speakers, AAM) overrides ``class_targets``,
``class_loss`` and ``task_term``.

IML-KD (docs/METHODS.md §2) for any classifier: the teacher attributes its output of the true
class (``teacher_targets``), and the KD terms see the student on the integrated input
(TaskBrain's second pass): ``L = class_loss(x) + η·KD(x̃)``.
"""

from __future__ import annotations

from functools import partial

import speechbrain as sb
import torch
from speechbrain.utils.Accuracy import AccuracyStats

from kd_modules.brains.task import TaskBrain
from kd_modules.dataio import is_placeholder
from kd_modules.models.ensemble import classification_loss


class ClassificationBrain(TaskBrain):
    """Train a classifier alone, or a student from a teacher, and report accuracy."""

    task_term = "ce"  # the class loss's name in the logs and the history

    def class_targets(self, batch) -> torch.Tensor:
        """The batch's classes ``(B,)``: never 0-d, even for one clip."""
        return batch.label_id.data.reshape(-1)

    def class_loss(self, student: dict, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the student's logits (an ensemble's: averaged over its members)."""
        return classification_loss(student, targets, getattr(self.hparams, "label_smoothing", 0.0))

    def teacher_targets(self, batch) -> torch.Tensor:
        """The batch's classes, for IML-KD's integrated gradients of the true class (a plain
        teacher ignores them)."""
        return self.class_targets(batch)

    def compute_objectives(self, predictions, batch, stage: sb.Stage) -> torch.Tensor:
        """The class loss on the input (+ weighted KD terms on ``distilled`` in training);
        accuracy outside training. A placeholder batch gives an exact 0."""
        student, teacher, lens, distilled = predictions
        return self.class_objectives(batch, stage, student, teacher, lens, kd_student=distilled)

    def class_objectives(
        self, batch, stage: sb.Stage, student: dict, teacher, lens, kd_student: dict | None = None
    ) -> torch.Tensor:
        """The class loss under the batch's mixup, plus the KD terms on ``kd_student`` (default
        ``student``); outside training, the student's top-1 hits. A placeholder batch gives an
        exact 0 (``task_and_kd_loss``) and no terms or accuracy."""
        targets = self.class_targets(batch)
        mixing = self.mixing if stage == sb.Stage.TRAIN else None
        loss_fn = partial(self.class_loss, student)  # labels -> the class loss
        loss = loss_fn(targets) if mixing is None else mixing.loss(loss_fn, targets)
        kd_student = student if kd_student is None else kd_student
        task = {self.task_term: loss}
        loss = self.task_and_kd_loss(batch, task, kd_student, teacher, lens, targets)
        if stage != sb.Stage.TRAIN and not is_placeholder(batch):
            logits = student["logits"].detach().float().unsqueeze(1)  # (B, 1, C): one "frame"
            self.accuracy.append(logits, targets.unsqueeze(1), torch.ones_like(lens))
        return loss

    def on_stage_start(self, stage: sb.Stage, epoch: int | None = None) -> None:
        """Reset the stage log and the accuracy counter."""
        super().on_stage_start(stage, epoch)
        self.accuracy = AccuracyStats()

    def stage_metrics(self) -> dict:
        """The stage's accuracy."""
        return {"accuracy": self.accuracy.summarize()}

    def selection_key(self) -> str:
        """Validation accuracy keeps the best checkpoint."""
        return "accuracy"
