"""Speaker embeddings from unlabelled audio: the student learns from its teacher's outputs only.

Data prepared without labels (``data_info.json`` ``labelled: false``, e.g. the speaker recipe's
``--dataset folder``) has no training speakers, so the AAM softmax, which needs them, is dropped
(said once in the log) and the loss is the weighted KD terms alone (embedding KD, feature terms;
a logit term has no shared classes and is refused by the teacher side). A student alone has
nothing to learn there and is refused in one line. Validation has no speaker-ID accuracy: the
checkpoint kept is the last epoch's (``selection_key`` ``epoch``).
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

    def compute_objectives(self, predictions, batch, stage: sb.Stage) -> torch.Tensor:
        """The weighted KD terms on ``distilled`` in training; 0 outside it (no labels to
        score). ``predictions`` is ``(student, teacher, lens, distilled)``."""
        student, teacher, lens, distilled = predictions
        zero = student["embedding"].sum() * 0.0  # on the graph: DDP sees every parameter
        if stage != sb.Stage.TRAIN:
            return zero.detach()
        return self.task_and_kd_loss(batch, {self.task_term: zero}, distilled, teacher, lens, None)

    def stage_metrics(self) -> dict:
        """The epoch, which keeps the last checkpoint (no validation metric without labels)."""
        return {"epoch": float(self.hparams.epoch_counter.current)}

    def selection_key(self) -> str:
        return "epoch"
