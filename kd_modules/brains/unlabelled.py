"""Speaker embeddings from unlabelled audio: the student learns from its teacher's outputs only.

Data prepared without labels (``data_info.json`` ``labelled: false``, e.g. the speaker recipe's
``--dataset folder``) has no training speakers, so the AAM softmax, which needs them, is dropped
(said once in the log) and the loss is the weighted KD terms alone (embedding KD, feature terms;
a logit term has no shared classes and is refused by the teacher side). A student alone has
nothing to learn there and is refused in one line. Validation has no speaker-ID accuracy: its
loss is the KD terms on the held-out segments, from the live teacher, which anneals the learning
rate and keeps the checkpoint (``negative_kd_loss``, higher is better). The cache covers the
training segments only: a run from it validates with ``validation_teacher`` (the live teacher the
recipe also hands over); without one the validation loss is 0.
"""

from __future__ import annotations

import logging

import speechbrain as sb
import torch

from kd_modules.brains.speaker import SpeakerBrain
from kd_modules.hparams import OneLineError

logger = logging.getLogger(__name__)


class UnlabelledDataError(OneLineError, ValueError):
    """A run on unlabelled data that needs labels (a student alone, no KD term)."""


class UnlabelledSpeakerBrain(SpeakerBrain):
    """A :class:`SpeakerBrain` without the AAM term: the KD terms are the whole loss."""

    task_term = "no_labels"
    validation_teacher = None  # the live teacher of a run whose training reads the cache

    def live_teacher(self):
        """The teacher validation runs live: the Brain's own, else ``validation_teacher``."""
        teacher = self.teacher or self.validation_teacher
        return teacher.to(self.device) if teacher is not None else None

    def on_fit_start(self) -> None:
        """Refuse a run without KD terms; say once that the AAM term is dropped."""
        if not self.distilling:
            raise UnlabelledDataError(
                "the training data has no labels (data_info.json labelled: false, e.g. "
                "--dataset folder): a student alone (method none) has nothing to learn from; "
                "distil it from a teacher (e.g. --methods embedding_cosine)"
            )
        logger.info("unlabelled training data: the AAM term is dropped, the KD terms are the loss")
        super().on_fit_start()

    def teacher_outputs(self, batch, stage: sb.Stage, feats, lens, placeholder: bool):
        """As in training, and in validation from the live teacher too (the KD loss on held-out
        segments is the one validation signal without labels)."""
        teacher = self.live_teacher() if stage == sb.Stage.VALID else None
        if teacher is None:
            return super().teacher_outputs(batch, stage, feats, lens, placeholder)
        if getattr(teacher, "own_front_end", False):
            feats, lens = self.view_waveforms
        return teacher(feats, lens)

    def compute_objectives(self, predictions, batch, stage: sb.Stage) -> torch.Tensor:
        """The weighted KD terms on ``distilled`` (training and validation); 0 in testing (no
        labels to score). ``predictions`` is ``(student, teacher, lens, distilled)``."""
        student, teacher, lens, distilled = predictions
        zero = student["embedding"].sum() * 0.0  # on the graph: DDP sees every parameter
        if teacher is None:
            return zero.detach()
        return self.task_and_kd_loss(batch, {self.task_term: zero}, distilled, teacher, lens, None)

    def on_stage_end(self, stage: sb.Stage, stage_loss: float, epoch: int | None = None) -> None:
        """Keep the stage's loss for :meth:`stage_metrics`, then TaskBrain's epoch end."""
        self.stage_loss = float(stage_loss)
        super().on_stage_end(stage, stage_loss, epoch)

    def stage_metrics(self) -> dict:
        """``negative_kd_loss``: minus the validation KD loss (higher is better)."""
        return {"negative_kd_loss": -self.stage_loss}

    def selection_key(self) -> str:
        return "negative_kd_loss"
