"""Single-label classification (sound classification, digits): cross-entropy + KD terms.

Expects batches with ``sig`` (waveforms ``(B, S)`` + relative lengths) and ``label_id``
(``(B, 1)`` class ids), and hparams ``front_end`` (``(wavs, lens) -> (B, T, F)``, the clean
features; ``kd_modules.replay.FrontEnd``, which the cache stage uses too). Training features go
through the run's augmentation (``DistillBrain.augment_features``: masks drawn afresh, or
replayed from the teacher cache) and, with ``mixup_alpha`` > 0, mixup (inputs, teacher outputs
and the cross-entropy's targets share λ and the pairing). Validation accuracy selects the
checkpoint.
"""

from __future__ import annotations

import speechbrain as sb
import torch
from speechbrain.utils.Accuracy import AccuracyStats

from kd_modules.brains.distill import DistillBrain
from kd_modules.dataio import is_placeholder
from kd_modules.models.ensemble import classification_loss


class ClassificationBrain(DistillBrain):
    """Train a classifier alone, or a student from a teacher, and report accuracy."""

    def compute_features(self, batch, stage: sb.Stage = sb.Stage.TEST):
        """Waveforms -> normalised filterbanks ``(B, T, F)`` and relative frame lengths ``(B,)``
        (each clip's own frame count, ``FrontEnd.frame_lengths``)."""
        wavs, lens = batch.sig
        if stage == sb.Stage.TRAIN and getattr(self.hparams, "speed_perturb", False):
            wavs = self.hparams.speed_perturber(wavs)  # not replayable: refused with a cache
        wavs, lens = self.augment_waveforms(batch, wavs, lens, stage)
        front_end = self.hparams.front_end  # the clean features, as the cache stage's
        feats, lens = front_end.features_and_lengths(wavs, lens)
        return self.augment_features(batch, feats, lens, stage), lens

    def compute_forward(self, batch, stage: sb.Stage):
        """Student outputs, teacher outputs (KD training only) and lengths.

        A placeholder batch (every clip unreadable) runs the same passes on its zero audio, so DDP
        ranks stay in step; ``compute_objectives`` zeroes its loss.
        """
        batch = batch.to(self.device)
        self.count_skipped(batch)
        placeholder = is_placeholder(batch)
        feats, lens = self.compute_features(batch, stage)
        self.mixing = mixing = self.draw_mixup(stage, feats.shape[0])  # for compute_objectives
        if mixing is not None:
            lam, perm = mixing
            feats = lam * feats + (1.0 - lam) * feats[perm]
        student = self.student_forward(feats, lens, placeholder=placeholder)
        teacher = None
        if stage == sb.Stage.TRAIN and self.distilling:
            teacher = self.teacher_forward(
                batch.id, feats, lens, placeholder=placeholder, batch=batch, mixing=mixing
            )
        return student, teacher, lens

    def compute_objectives(self, predictions, batch, stage: sb.Stage) -> torch.Tensor:
        """Cross-entropy (+ weighted KD terms in training); accuracy outside training.

        A placeholder batch gives an exact 0 (``placeholder_loss``) and no terms or accuracy.
        """
        student, teacher, lens = predictions
        mixing = self.mixing if stage == sb.Stage.TRAIN else None
        targets = batch.label_id.data.reshape(-1)  # (B,): never 0-d, even for one clip
        smoothing = getattr(self.hparams, "label_smoothing", 0.0)
        loss = classification_loss(student, targets, smoothing)  # an ensemble's: per member
        if mixing is not None:
            lam, perm = mixing
            mixed = classification_loss(student, targets[perm], smoothing)
            loss = lam * loss + (1.0 - lam) * mixed
        if is_placeholder(batch):
            return self.placeholder_loss(loss, student, teacher, lens, targets)
        self.log_terms(ce=loss)
        if teacher is not None:
            loss = loss + self.distill_loss(student, teacher, lens, targets)
        if stage != sb.Stage.TRAIN:
            logits = student["logits"].detach().float().unsqueeze(1)  # (B, 1, C): one "frame"
            self.accuracy.append(logits, targets.unsqueeze(1), torch.ones_like(lens))
        return loss

    def on_stage_start(self, stage: sb.Stage, epoch: int | None = None) -> None:
        """Reset the term accumulators and the accuracy counter."""
        super().on_stage_start(stage, epoch)
        self.accuracy = AccuracyStats()

    def on_stage_end(self, stage: sb.Stage, stage_loss: float, epoch: int | None = None) -> None:
        """Log the epoch, anneal the learning rate, keep the best-accuracy checkpoint."""
        stats = {"loss": stage_loss, **self.term_means()}
        if self.skipped_clips:
            stats["skipped_clips"] = self.skipped_clips
        if stage != sb.Stage.TRAIN:
            stats["accuracy"] = self.accuracy.summarize()
        elapsed = self.finish_epoch(stage, epoch, stats)
        if stage == sb.Stage.TRAIN:
            self.train_stats = {**stats, "epoch_time_s": elapsed}
        elif stage == sb.Stage.VALID:
            old_lr, new_lr = self.hparams.lr_annealing(stats["loss"])
            sb.nnet.schedulers.update_learning_rate(self.optimizer, new_lr)
            self.hparams.train_logger.log_stats(
                {"epoch": epoch, "lr": old_lr}, train_stats=self.train_stats, valid_stats=stats
            )
            self.checkpointer.save_and_keep_only(
                meta={"accuracy": stats["accuracy"], "epoch": epoch},
                max_keys=["accuracy"],
                num_to_keep=1,
            )
        else:
            self.test_stats = stats
            self.hparams.train_logger.log_stats(
                {"Epoch loaded": self.hparams.epoch_counter.current}, test_stats=stats
            )
