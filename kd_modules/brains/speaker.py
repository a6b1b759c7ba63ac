"""Speaker embeddings: speaker classification with an AAM softmax and KD terms.

Expects batches with ``sig`` (waveforms ``(B, S)`` + relative lengths) and ``spk_label``
(``(B, 1)`` training-speaker ids), and hparams ``front_end`` and ``aam_loss`` (SpeechBrain's
``LogSoftmaxWrapper(AdditiveAngularMargin)``, called on the model's ``cosine`` ``(B, 1, C)``).
Features, augmentation, mixup, unreadable batches and the epoch's end are
:class:`~kd_modules.brains.task.TaskBrain`'s; the mixed class loss and validation accuracy
(speaker identification on held-out segments of the training speakers, which selects the
checkpoint) are :class:`ClassificationBrain`'s, with the speakers as classes and AAM as the loss.

IML-KD's second pass on the integrated input (docs/METHODS.md §2) is TaskBrain's, for every
task: ``L = AAM(x) + η·KD(x̃)``, the teacher's AAM cosine of the true speaker attributed.
"""

from __future__ import annotations

import torch

from kd_modules.brains.classification import ClassificationBrain


class SpeakerBrain(ClassificationBrain):
    """Train a speaker-embedding model alone or from a teacher; report speaker-ID accuracy."""

    task_term = "aam"

    def class_targets(self, batch) -> torch.Tensor:
        """The batch's training speakers ``(B,)``."""
        return batch.spk_label.data.reshape(-1)

    def class_loss(self, student: dict, targets: torch.Tensor) -> torch.Tensor:
        """AAM softmax on the student's ``cosine`` ``(B, 1, C)``, as SpeechBrain's AAM wants it."""
        return self.hparams.aam_loss(student["cosine"].unsqueeze(1), targets.unsqueeze(1))
