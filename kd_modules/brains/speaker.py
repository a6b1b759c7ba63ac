"""Speaker embeddings: speaker classification with an AAM softmax, KD terms, IML-KD's second pass.

Expects batches with ``sig`` (waveforms ``(B, S)`` + relative lengths) and ``spk_label``
(``(B, 1)`` training-speaker ids), and hparams ``front_end`` and ``aam_loss`` (SpeechBrain's
``LogSoftmaxWrapper(AdditiveAngularMargin)``, called on the model's ``cosine`` ``(B, 1, C)``).
Features, augmentation, mixup, unreadable batches, validation accuracy (speaker identification
on held-out segments of the training speakers, which selects the checkpoint) and the epoch
logging are :class:`ClassificationBrain`'s.

IML-KD (METHODS.md §2): when the teacher's outputs carry ``ig_weight`` ``(B, T', F)`` (a live
:class:`~kd_modules.teacher.IntegratedTeacher`, or a teacher cache built from one), the student
runs a second time, on the integrated input ``x̃ = integrated_input.apply(x, ig_weight)``, and the
KD terms compare its outputs with the teacher's outputs on the same ``x̃``; the AAM loss stays on
the raw input: ``L = AAM(x) + η·KD(x̃)``.
"""

from __future__ import annotations

import speechbrain as sb
import torch

from kd_modules.brains.classification import ClassificationBrain
from kd_modules.dataio import is_placeholder


class SpeakerBrain(ClassificationBrain):
    """Train a speaker-embedding model alone or from a teacher; report speaker-ID accuracy."""

    def compute_forward(self, batch, stage: sb.Stage):
        """``(student, teacher, lens, distilled)``: the student's outputs on the input, the
        teacher's (KD training only), the lengths, and the student's outputs the KD terms see
        (on the integrated input for IML-KD, else the same as ``student``)."""
        batch = batch.to(self.device)
        self.count_skipped(batch)
        placeholder = is_placeholder(batch)
        feats, lens = self.compute_features(batch, stage)
        self.mixing = mixing = self.draw_mixup(stage, feats.shape[0])
        if mixing is not None:
            lam, perm = mixing
            feats = lam * feats + (1.0 - lam) * feats[perm]
        student = self.student_forward(feats, lens, placeholder=placeholder)
        teacher, distilled = None, student
        if stage == sb.Stage.TRAIN and self.distilling:
            targets = batch.spk_label.data.reshape(-1)
            teacher = self.teacher_forward(
                batch.id, feats, lens, placeholder, batch=batch, mixing=mixing, targets=targets
            )
            weight = teacher.pop("ig_weight", None)
            if weight is not None:
                if mixing is not None:
                    raise ValueError("IML-KD's integrated input does not mix: set mixup_alpha 0")
                integrated = feats if placeholder else self.hparams.integrated_input.apply(
                    feats, weight.to(feats.dtype)
                )
                distilled = self.student_forward(integrated, lens, placeholder=placeholder)
        return student, teacher, lens, distilled

    def compute_objectives(self, predictions, batch, stage: sb.Stage) -> torch.Tensor:
        """AAM softmax on the input (+ weighted KD terms on ``distilled`` in training);
        speaker-ID accuracy outside training. A placeholder batch gives an exact 0."""
        student, teacher, lens, distilled = predictions
        targets = batch.spk_label.data.reshape(-1)  # (B,)
        cosine = student["cosine"].unsqueeze(1)  # (B, 1, C), as SpeechBrain's AAM wants it
        loss = self.hparams.aam_loss(cosine, targets.unsqueeze(1))
        mixing = self.mixing if stage == sb.Stage.TRAIN else None
        if mixing is not None:
            lam, perm = mixing
            loss = lam * loss + (1.0 - lam) * self.hparams.aam_loss(cosine, targets[perm, None])
        if is_placeholder(batch):
            return self.placeholder_loss(loss, distilled, teacher, lens, targets)
        self.log_terms(aam=loss)
        if teacher is not None:
            loss = loss + self.distill_loss(distilled, teacher, lens, targets)
        if stage != sb.Stage.TRAIN:
            logits = student["logits"].detach().float().unsqueeze(1)  # (B, 1, C)
            self.accuracy.append(logits, targets.unsqueeze(1), torch.ones_like(lens))
        return loss
