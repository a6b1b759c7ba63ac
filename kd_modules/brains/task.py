"""TaskBrain: what every task brain does the same way, on waveform batches.

Expects batches with ``sig`` (waveforms ``(B, S)`` + relative lengths) and hparams ``front_end``
(``(wavs, lens) -> (B, T, F)``, the clean features; ``kd_modules.replay.FrontEnd``, which the
cache stage uses too), ``lr_annealing``, ``train_logger``, ``epoch_counter``, optionally
``speed_perturb``/``speed_perturber``. In training the waveforms and features go through the
run's :class:`~kd_modules.augment.AugmentPolicy` (crop, masks: drawn afresh, or replayed from the
teacher cache) and its mixup, which the teacher's outputs follow. An epoch ends the same way for
every task: its statistics go to the history file and the log (and, with the YAML key
``tensorboard: True``, to TensorBoard events under ``tensorboard_folder``), the learning rate is
annealed on the validation loss and the checkpoint best by :meth:`TaskBrain.selection_key` is
kept.

A task brain adds its task loss (``compute_objectives``, through ``task_and_kd_loss``), its
metrics (``on_stage_start`` resets them, ``stage_metrics`` summarises them) and, where the
teacher needs them, the batch's classes (``teacher_targets``).
"""

from __future__ import annotations

from pathlib import Path

import speechbrain as sb
import torch

from kd_modules.augment import AugmentPolicy
from kd_modules.brains.distill import DistillBrain
from kd_modules.brains.stage_log import EpochTensorboardLogger, History
from kd_modules.dataio import is_placeholder


class TaskBrain(DistillBrain):
    """A DistillBrain with the front end, the augment policy and the epoch's end.

    Keyword arguments beyond DistillBrain's: ``history_file`` (JSON list of per-epoch
    statistics, for curves and the results table) and ``augmentation`` (the run's
    :class:`~kd_modules.augment.AugmentPolicy`, applied in training).
    """

    def __init__(
        self,
        *args,
        history_file: str | Path | None = None,
        augmentation: AugmentPolicy | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.augmentation = augmentation
        self.history = History(history_file)
        self.train_epochs_run = 0  # epochs trained by this process (0 when resuming a finished run)
        self.mixing = None  # the current training batch's mixup (a Mixing), for the task loss
        self.view_waveforms = None  # its cropped waveforms, lengths: an own-front-end teacher's
        self._tensorboard: EpochTensorboardLogger | None = None  # made on the first epoch's end

    # ----- forward ---------------------------------------------------------------------------
    def compute_features(self, batch, stage: sb.Stage = sb.Stage.TEST):
        """Waveforms -> normalised filterbanks ``(B, T, F)`` and relative frame lengths ``(B,)``
        (each clip's own frame count, ``FrontEnd.frame_lengths``); training batches through
        speed perturbation (not replayable: refused with a cache), the crop and the masks."""
        wavs, lens = batch.sig
        policy = self.augmentation if stage == sb.Stage.TRAIN else None
        stored = getattr(batch, "aug_params", None)  # (B, P): the cached views' parameters
        stored = stored.data if stored is not None else None
        if stage == sb.Stage.TRAIN and getattr(self.hparams, "speed_perturb", False):
            wavs = self.hparams.speed_perturber(wavs)
        if policy is not None:
            wavs, lens = policy.crop_training(wavs, lens, stored)
        self.view_waveforms = (wavs, lens)  # for a teacher on its own front end
        feats, lens = self.hparams.front_end.features_and_lengths(wavs, lens)
        if policy is not None:
            feats = policy.mask_training(feats, lens, stored)
        return feats, lens

    def model_inputs(self, batch, stage: sb.Stage) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """``(feats, lens, placeholder)`` of a batch moved to the device: its features, mixed by
        the batch's mixup in training (kept in ``self.mixing`` for the task loss and the
        teacher), and whether it is a placeholder (every clip unreadable; the same passes run on
        its zero audio, so DDP ranks stay in step, and its loss is an exact 0)."""
        batch.to(self.device)  # in place: compute_objectives gets the same batch
        self.stage_log.count_skipped(batch)
        feats, lens = self.compute_features(batch, stage)
        policy = self.augmentation if stage == sb.Stage.TRAIN else None
        self.mixing = policy.draw_mixup(feats.shape[0], self.device) if policy else None
        if self.mixing is not None:
            feats = self.mixing.inputs(feats)
        return feats, lens, is_placeholder(batch)

    def teacher_outputs(self, batch, stage: sb.Stage, feats, lens, placeholder: bool):
        """The teacher's outputs on the student's input (KD training only, else None); a teacher
        on its own front end (``own_front_end``, e.g. a hub model) gets the view's waveforms
        ``(B, S)`` (cropped as the student's, before any feature mask) instead of ``feats``."""
        if stage != sb.Stage.TRAIN or not self.distilling:
            return None
        if getattr(self.teacher, "own_front_end", False):
            feats, lens = self.view_waveforms
        targets = self.teacher_targets(batch)
        return self.teacher_forward(
            batch.id, feats, lens, placeholder, batch=batch, mixing=self.mixing, targets=targets
        )

    def teacher_targets(self, batch) -> torch.Tensor | None:
        """The batch's classes ``(B,)`` for a teacher whose outputs depend on them (None here)."""
        return None

    def compute_forward(self, batch, stage: sb.Stage):
        """``(student, teacher, lens, distilled)``: the student's outputs on the input, the
        teacher's (KD training only), the lengths, and the student's outputs the KD terms see.

        IML-KD (docs/METHODS.md §2), for every task: when the teacher's outputs carry
        ``ig_weight`` ``(B, T', F)`` (a live :class:`~kd_modules.teacher.IntegratedTeacher`, or a
        teacher cache built from one), the student runs a second time, on the integrated input
        ``x̃ = integrated_input.apply(x, ig_weight)``, and the KD terms compare its outputs with
        the teacher's on the same ``x̃`` while the task loss stays on the raw input
        (``L = task(x) + η·KD(x̃)``); else ``distilled`` is ``student``.
        """
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

    # ----- the epoch's end -------------------------------------------------------------------
    def log_tensorboard(self, epoch: int, meta: dict | None = None, **stats: dict) -> None:
        """The epoch's ``meta`` values (``lr``) and ``train_stats`` / ``valid_stats`` /
        ``test_stats`` as TensorBoard events at step ``epoch``, when the YAML key
        ``tensorboard`` is True (under ``tensorboard_folder``, ``<run>/tensorboard``; off by
        default)."""
        if not getattr(self.hparams, "tensorboard", False):
            return
        if self._tensorboard is None:
            self._tensorboard = EpochTensorboardLogger(self.hparams.tensorboard_folder)
        self._tensorboard.log_stats({"epoch": epoch, **(meta or {})}, **stats)

    def stage_metrics(self) -> dict:
        """The task's metrics over the stage (validation and test); none here."""
        return {}

    def selection_key(self) -> str:
        """The validation metric (higher is better) that keeps the best checkpoint."""
        raise NotImplementedError(f"{type(self).__name__} names no checkpoint selection key")

    def on_stage_end(self, stage: sb.Stage, stage_loss: float, epoch: int | None = None) -> None:
        """Log the epoch, anneal the learning rate, keep the checkpoint best by the key."""
        stats = {"loss": stage_loss, **self.stage_log.means()}
        if self.skipped_clips:
            stats["skipped_clips"] = self.skipped_clips
        if stage != sb.Stage.TRAIN:
            stats.update(self.stage_metrics())
        elapsed = self.stage_log.elapsed_s()
        if stage == sb.Stage.TRAIN:
            self.train_epochs_run += 1
        self.history.record(stage, epoch, elapsed, stats)
        if stage == sb.Stage.TRAIN:
            self.train_stats = {**stats, "epoch_time_s": elapsed}
        elif stage == sb.Stage.VALID:
            key = self.selection_key()
            old_lr, new_lr = self.hparams.lr_annealing(stats["loss"])
            sb.nnet.schedulers.update_learning_rate(self.optimizer, new_lr)
            self.hparams.train_logger.log_stats(
                {"epoch": epoch, "lr": old_lr}, train_stats=self.train_stats, valid_stats=stats
            )
            self.log_tensorboard(
                epoch, meta={"lr": old_lr}, train_stats=self.train_stats, valid_stats=stats
            )
            self.checkpointer.save_and_keep_only(
                meta={key: stats[key], "epoch": epoch}, max_keys=[key], num_to_keep=1
            )
        else:
            self.test_stats = stats
            self.hparams.train_logger.log_stats(
                {"Epoch loaded": self.hparams.epoch_counter.current}, test_stats=stats
            )
            self.log_tensorboard(self.hparams.epoch_counter.current, test_stats=stats)
