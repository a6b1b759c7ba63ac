"""DistillBrain: the one class that knows a teacher exists.

It runs the student and the teacher (live, or its cache in its place) and turns their outputs
into the weighted KD terms (:class:`KDObjective`); the task brains (:mod:`kd_modules.brains.task`)
call ``student_forward``, ``teacher_forward`` and ``distill_loss`` from their
``compute_forward``/``compute_objectives``. AMP, gradient accumulation, clipping and DDP stay
SpeechBrain's: ``fit_batch`` is never overridden. The stage's running sums are a
:class:`~kd_modules.brains.stage_log.StageLog`; DDP's private set-up and placeholder batches are
:mod:`kd_modules.brains.ddp`'s.
"""

from __future__ import annotations

import logging

import speechbrain as sb
import torch
from torch import nn

from kd_modules.augment import Mixing
from kd_modules.brains.ddp import (
    DDPBrain,
    placeholder_outputs,
    running_stats_kept,
    unwrap_module,
    zero_loss,
)
from kd_modules.brains.stage_log import StageLog
from kd_modules.cache import TeacherCache
from kd_modules.dataio import is_placeholder
from kd_modules.replay import ViewReplay
from kd_modules.taps import FeatureTaps
from kd_modules.teacher import Teacher

logger = logging.getLogger(__name__)


class KDObjective(nn.Module):
    """The KD loss terms of a run, as one module (so DDP syncs the adapters' gradients).

    Arguments
    ---------
    losses : dict
        Term name -> KD loss module ``(student_out, teacher_out, lens, targets) -> scalar``.
    weights : dict
        Term name -> weight in the total loss; every term needs one.
    """

    def __init__(self, losses: dict[str, nn.Module], weights: dict[str, float]) -> None:
        super().__init__()
        missing = sorted(set(losses) - set(weights))
        unused = sorted(set(weights) - set(losses))
        if missing or unused:
            raise ValueError(
                f"kd_weights must name each KD loss: missing {missing}, extra {unused}"
            )
        self.losses = nn.ModuleDict(losses)
        self.weights = {name: float(weights[name]) for name in losses}

    def forward(self, student_out: dict, teacher_out: dict, lens, targets) -> dict:
        """Unweighted value of every term: name -> scalar tensor."""
        return {
            name: loss(student_out, teacher_out, lens, targets)
            for name, loss in self.losses.items()
        }


class DistillBrain(DDPBrain):
    """``sb.Brain`` that trains ``modules.model`` from a frozen teacher (or a teacher cache).

    Keyword arguments beyond SpeechBrain's: ``teacher`` (a ``Teacher``, kept outside
    ``self.modules``), ``kd_losses``/``kd_weights`` (the KD terms, adapters optimised and
    checkpointed with the student), ``student_taps`` (name -> dotted path of student features),
    ``teacher_cache`` (a ``TeacherCache`` replacing the live teacher) and ``view_replay`` (the
    :class:`~kd_modules.replay.ViewReplay` whose views a cached KD run replays; told the epoch).
    With no teacher and no cache it is a plain supervised Brain (teachers and students-alone use
    it too).
    """

    def __init__(
        self,
        modules: dict | None = None,
        opt_class=None,
        hparams: dict | None = None,
        run_opts: dict | None = None,
        checkpointer=None,
        teacher: Teacher | None = None,
        kd_losses: dict[str, nn.Module] | None = None,
        kd_weights: dict[str, float] | None = None,
        student_taps: dict[str, str] | None = None,
        teacher_cache: TeacherCache | None = None,
        view_replay: ViewReplay | None = None,
    ) -> None:
        modules = dict(modules or {})
        if "model" not in modules:
            raise ValueError("DistillBrain trains modules['model']: no 'model' in modules")
        kd_objective = KDObjective(kd_losses or {}, kd_weights or {})
        modules["kd_objective"] = kd_objective
        self.stage_log = StageLog()
        if checkpointer is not None:
            if any(True for _ in kd_objective.parameters()):
                checkpointer.add_recoverable("kd_objective", kd_objective)
            checkpointer.add_recoverable("stage_progress", self.stage_log, optional_load=True)
        super().__init__(modules, opt_class, hparams or {}, run_opts, checkpointer)
        self.teacher = teacher.to(self.device) if teacher is not None else None
        self.teacher_cache = teacher_cache
        self.view_replay = view_replay
        self.distilling = bool(kd_objective.losses)
        self._student_paths = dict(student_taps or {})
        self._student_taps: FeatureTaps | None = None

    @property
    def skipped_clips(self) -> int:
        """Unreadable clips dropped in the current stage."""
        return self.stage_log.skipped

    def on_fit_start(self) -> None:
        """Refuse to train KD terms without a teacher (evaluation alone needs none)."""
        if self.distilling and self.teacher is None and self.teacher_cache is None:
            raise ValueError("KD losses are configured but neither a teacher nor a cache is given")
        if self.data_parallel_backend and self._student_paths:
            raise ValueError(
                "Student feature taps do not work with DataParallel (each replica sees a slice of "
                "the batch): use DDP (run.sh --ngpu N, torchrun) instead"
            )
        super().on_fit_start()

    def on_stage_start(self, stage: sb.Stage, epoch: int | None = None) -> None:
        """Reset the stage log (term sums, skipped clips, timer); tell the view replay the epoch.

        A training epoch resumed from an intra-epoch checkpoint (SpeechBrain restored a non-zero
        ``step``) continues the sums saved with it instead.
        """
        self.stage_log.reset(epoch)
        if stage == sb.Stage.TRAIN and self.view_replay is not None:
            self.view_replay.epoch = epoch  # before the loader forks its workers for the epoch
        if stage == sb.Stage.TRAIN and self.step > 0 and self.stage_log.resume(epoch):
            logger.info("Epoch %s resumed at step %d with its term sums", epoch, self.step)
        self.epoch = epoch

    # ----- forward passes -------------------------------------------------------------------
    def student_forward(
        self, feats: torch.Tensor, lens: torch.Tensor, placeholder: bool = False
    ) -> dict:
        """The student's outputs (``logits``, ``embedding``, ...) plus its tapped features.

        A ``placeholder`` batch (:mod:`kd_modules.brains.ddp`) leaves norm running statistics alone.
        """
        if self._student_taps is None:  # after DDP wrapping, on the module that really runs
            self._student_taps = FeatureTaps(unwrap_module(self.modules.model), self._student_paths)
        with running_stats_kept(self.modules.model, keep=placeholder):
            outputs = dict(self.modules.model(feats, lens))
        outputs.update(self._student_taps.features)
        return outputs

    def teacher_forward(
        self,
        ids: list[str],
        feats: torch.Tensor,
        lens: torch.Tensor,
        placeholder: bool = False,
        batch=None,
        mixing: Mixing | None = None,
        targets: torch.Tensor | None = None,
    ) -> dict:
        """The teacher's outputs for the batch: from the cache when there is one, else live.

        Cached outputs come with the batch (``teacher_<name>``, read by the data pipeline for the
        epoch's view; :mod:`kd_modules.replay`); without a ``batch`` they are looked up by id (view
        0). With ``mixing`` (the batch's mixup) the live teacher sees the mixed ``feats`` as the
        student does, and cached outputs are mixed with the same λ and pairing. For a
        ``placeholder`` batch the cache gives zeros shaped like one cached utterance's outputs,
        ``(B, ...)``. ``targets`` (the batch's classes ``(B,)``) go to a live teacher whose
        outputs depend on them (:class:`~kd_modules.teacher.IntegratedTeacher`). A live teacher
        on its own front end (``own_front_end``) gets the view's waveforms as ``feats`` and, as its
        cache, sees them unmixed: its outputs are mixed like cached ones.
        """
        cache = self.teacher_cache
        if cache is None:
            if self.teacher is None:
                raise RuntimeError("teacher_forward called but this Brain has no teacher")
            if targets is not None:
                outputs = self.teacher(feats, lens, targets)
            else:
                outputs = self.teacher(feats, lens)
            if mixing is not None and getattr(self.teacher, "own_front_end", False):
                return mixing.outputs(outputs)
            return outputs
        if placeholder:
            return placeholder_outputs(cache.example(), len(ids), self.device)
        if batch is not None and hasattr(batch, f"teacher_{cache.names[0]}"):
            outputs = {name: getattr(batch, f"teacher_{name}").data for name in cache.names}
            outputs = {name: value.to(self.device).float() for name, value in outputs.items()}
        else:
            outputs = cache.lookup(ids, self.device)
        return mixing.outputs(outputs) if mixing is not None else outputs

    # ----- the loss -------------------------------------------------------------------------
    def log_terms(self, **terms: torch.Tensor) -> None:
        """Accumulate loss terms for the epoch means (:meth:`StageLog.log`); non-finite: stop."""
        self.stage_log.log(self.step, **terms)

    def distill_loss(self, student_out: dict, teacher_out: dict, lens, targets) -> torch.Tensor:
        """Weighted sum of the KD terms; each term is logged by name (``kd_<name>``).

        A term whose weighted value is not finite stops the run naming the term and its weight
        (a huge weight overflows the sum, and the next step's NaN would be blamed on ``ce``).
        """
        terms = self.modules.kd_objective(student_out, teacher_out, lens, targets)
        weights = self.warmed_up(unwrap_module(self.modules.kd_objective).weights)
        self.log_terms(**{f"kd_{name}": value for name, value in terms.items()})
        total = 0.0
        for name, value in terms.items():
            weighted = weights[name] * value
            if not torch.isfinite(weighted.detach()).all():
                raise FloatingPointError(
                    f"KD term 'kd_{name}' with weight {weights[name]:g} is "
                    f"{float(weighted.detach())} (unweighted {float(value.detach()):g}; epoch "
                    f"{getattr(self, 'epoch', '?')}, step {self.step}): stopping instead of "
                    "training through it. Lower this term's weight or check its inputs."
                )
            self.stage_log.step_terms[f"kd_{name}"] = (weights[name], float(weighted.detach()))
            total = total + weighted
        return total

    def warmed_up(self, weights: dict[str, float]) -> dict[str, float]:
        """The terms' weights in this epoch: a term named in hparams ``kd_warmup_epochs``
        (term -> N) grows linearly to its weight over its first N epochs (weight · epoch / N,
        epochs counted from 1), as ENSKD warms up DKD; the others keep their weight."""
        warmup = getattr(self.hparams, "kd_warmup_epochs", None) or {}
        epoch = getattr(self, "epoch", None) or 1
        return {
            name: weight * min(1.0, epoch / warmup[name]) if warmup.get(name) else weight
            for name, weight in weights.items()
        }

    def task_and_kd_loss(
        self, batch, task: dict[str, torch.Tensor], student_out: dict, teacher_out, lens, targets
    ) -> torch.Tensor:
        """The task term (``task``: its log name -> scalar) plus the weighted KD terms when
        ``teacher_out`` is given; both are logged. A placeholder batch gives exactly 0 from the
        same graph (:func:`~kd_modules.brains.ddp.zero_loss`) and logs nothing."""
        [(name, loss)] = task.items()
        if is_placeholder(batch):
            kd_terms = None
            if teacher_out is not None:
                kd_terms = self.modules.kd_objective(student_out, teacher_out, lens, targets)
            return zero_loss(loss, kd_terms)
        self.log_terms(**task)
        if teacher_out is not None:
            loss = loss + self.distill_loss(student_out, teacher_out, lens, targets)
        return loss

    def on_fit_batch_end(self, batch, outputs, loss, should_step: bool) -> None:
        """Stop as soon as an update made the student's parameters non-finite, naming the term
        (:meth:`StageLog.check_update`)."""
        if should_step:
            self.stage_log.check_update(self.modules.parameters(), self.step)
