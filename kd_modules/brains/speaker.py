"""Speaker embeddings: speaker classification with an AAM softmax, KD terms, IML-KD's second pass.

Expects batches with ``sig`` (waveforms ``(B, S)`` + relative lengths) and ``spk_label``
(``(B, 1)`` training-speaker ids), and hparams ``front_end`` and ``aam_loss`` (SpeechBrain's
``LogSoftmaxWrapper(AdditiveAngularMargin)``, called on the model's ``cosine`` ``(B, 1, C)``).
Features, augmentation, mixup, unreadable batches and the epoch's end are
:class:`~kd_modules.brains.task.TaskBrain`'s; the mixed class loss and validation accuracy
(speaker identification on held-out segments of the training speakers, which selects the
checkpoint) are :class:`ClassificationBrain`'s, with the speakers as classes and AAM as the loss.

IML-KD (docs/METHODS.md §2): when the teacher's outputs carry ``ig_weight`` ``(B, T', F)`` (a live
:class:`~kd_modules.teacher.IntegratedTeacher`, or a teacher cache built from one), the student
runs a second time, on the integrated input ``x̃ = integrated_input.apply(x, ig_weight)``, and the
KD terms compare its outputs with the teacher's outputs on the same ``x̃``; the AAM loss stays on
the raw input: ``L = AAM(x) + η·KD(x̃)``.
"""

from __future__ import annotations

import speechbrain as sb
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

    def teacher_targets(self, batch) -> torch.Tensor:
        """The training speakers, for IML-KD's integrated gradients."""
        return self.class_targets(batch)

    def compute_forward(self, batch, stage: sb.Stage):
        """``(student, teacher, lens, distilled)``: the student's outputs on the input, the
        teacher's (KD training only), the lengths, and the student's outputs the KD terms see
        (on the integrated input for IML-KD, else the same as ``student``)."""
        feats, lens, placeholder = self.model_inputs(batch, stage)
        student = self.student_forward(feats, lens, placeholder=placeholder)
        teacher = self.teacher_outputs(batch, stage, feats, lens, placeholder)
        weight = teacher.pop("ig_weight", None) if teacher is not None else None
        if weight is None:
            return student, teacher, lens, student
        if self.mixing is not None:
            raise ValueError("IML-KD's integrated input does not mix: set mixup_alpha 0")
        if not placeholder:  # a placeholder's zero audio needs no integrated input
            feats = self.hparams.integrated_input.apply(feats, weight.to(feats.dtype))
        return student, teacher, lens, self.student_forward(feats, lens, placeholder)

    def compute_objectives(self, predictions, batch, stage: sb.Stage) -> torch.Tensor:
        """AAM softmax on the input (+ weighted KD terms on ``distilled`` in training);
        speaker-ID accuracy outside training. A placeholder batch gives an exact 0."""
        student, teacher, lens, distilled = predictions
        return self.class_objectives(batch, stage, student, teacher, lens, kd_student=distilled)
