"""Single-label classification (sound classification, digits): cross-entropy + KD terms.

Expects batches with ``sig`` (waveforms ``(B, S)`` + relative lengths) and ``label_id``
(``(B, 1)`` class ids), and the hparams of :class:`~kd_modules.brains.task.TaskBrain` (front end,
augmentation, mixup: inputs, teacher outputs and the cross-entropy's targets share λ and the
pairing), optionally ``label_smoothing``. Validation accuracy selects the checkpoint.
"""

from __future__ import annotations

import speechbrain as sb
import torch
from speechbrain.utils.Accuracy import AccuracyStats

from kd_modules.brains.task import TaskBrain
from kd_modules.dataio import is_placeholder
from kd_modules.models.ensemble import classification_loss


class ClassificationBrain(TaskBrain):
    """Train a classifier alone, or a student from a teacher, and report accuracy."""

    def compute_objectives(self, predictions, batch, stage: sb.Stage) -> torch.Tensor:
        """Cross-entropy (+ weighted KD terms in training); accuracy outside training.

        A placeholder batch gives an exact 0 (``task_and_kd_loss``) and no terms or accuracy.
        """
        student, teacher, lens = predictions
        targets = batch.label_id.data.reshape(-1)  # (B,): never 0-d, even for one clip
        smoothing = getattr(self.hparams, "label_smoothing", 0.0)

        def ce(labels: torch.Tensor) -> torch.Tensor:
            return classification_loss(student, labels, smoothing)  # an ensemble's: per member

        mixing = self.mixing if stage == sb.Stage.TRAIN else None
        loss = ce(targets) if mixing is None else mixing.loss(ce, targets)
        loss = self.task_and_kd_loss(batch, {"ce": loss}, student, teacher, lens, targets)
        if stage != sb.Stage.TRAIN:
            self.count_correct(batch, student, targets, lens)
        return loss

    def count_correct(self, batch, student: dict, targets: torch.Tensor, lens) -> None:
        """Add the batch's top-1 hits on ``targets`` ``(B,)`` to the accuracy (not a
        placeholder's)."""
        if is_placeholder(batch):
            return
        logits = student["logits"].detach().float().unsqueeze(1)  # (B, 1, C): one "frame"
        self.accuracy.append(logits, targets.unsqueeze(1), torch.ones_like(lens))

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
