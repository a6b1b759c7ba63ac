"""DistillBrain: the one class that knows a teacher exists.

Task brains (classification, tagging, speaker) subclass it and only add their features, task loss
and metrics; they call ``student_forward``, ``teacher_forward`` and ``distill_loss`` from
``compute_forward``/``compute_objectives`` and ``finish_epoch`` from ``on_stage_end``. AMP,
gradient accumulation, clipping and DDP stay SpeechBrain's: ``fit_batch`` is never overridden.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks
from speechbrain.utils.distributed import if_main_process
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from kd_modules.augment import AugmentPolicy, mix
from kd_modules.cache import TeacherCache
from kd_modules.dataio import write_json_atomic
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


@register_checkpoint_hooks
class StageProgress:
    """Running sums of the current stage (loss terms, skipped clips, compute time).

    Checkpointed with the student, so a run resumed from an intra-epoch checkpoint logs the mean
    of each term over the whole epoch (as SpeechBrain's own ``avg_train_loss`` is) and an epoch
    time that covers the steps before the kill, instead of only the steps after the resume.
    """

    def __init__(self) -> None:
        self.reset(None)
        self.restored: dict | None = None  # loaded from an intra-epoch checkpoint, not yet used

    def reset(self, epoch: int | None) -> None:
        """Start a new stage: zero sums, restart the clock."""
        self.epoch = epoch
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.skipped = 0
        self.start = time.perf_counter()

    def resume(self, epoch: int | None) -> bool:
        """Continue the sums of ``epoch`` saved by an intra-epoch checkpoint, if there are any."""
        state, self.restored = self.restored, None
        if state is None or state["epoch"] != epoch:
            return False
        self.sums.update(state["sums"])
        self.counts.update(state["counts"])
        self.skipped = state["skipped"]
        self.start -= state["elapsed_s"]
        return True

    def elapsed_s(self) -> float:
        """Compute time of the stage so far (sessions before an intra-epoch resume included)."""
        return time.perf_counter() - self.start

    @mark_as_saver
    def save(self, path: Path) -> None:
        state = {
            "epoch": self.epoch,
            "sums": dict(self.sums),
            "counts": dict(self.counts),
            "skipped": self.skipped,
            "elapsed_s": self.elapsed_s(),
        }
        Path(path).write_text(json.dumps(state))

    @mark_as_loader
    def load(self, path: Path, end_of_epoch: bool) -> None:
        # An end-of-epoch checkpoint was saved during validation: the next epoch starts afresh.
        self.restored = None if end_of_epoch else json.loads(Path(path).read_text())


def unwrap_module(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return module.module if isinstance(module, DistributedDataParallel) else module


@contextmanager
def running_stats_kept(module: nn.Module, keep: bool = True) -> Iterator[None]:
    """Run ``module`` (with ``keep``) without changing its norm layers' running statistics.

    For a placeholder batch (zero audio) in train mode: momentum 0 leaves BatchNorm's running mean
    and variance as they were, while the layers still do everything else, SyncBatchNorm's
    collectives included, as for a real batch; ``num_batches_tracked`` is restored afterwards.
    """
    modules = module.modules() if keep else ()
    norms = [m for m in modules if isinstance(getattr(m, "running_mean", None), torch.Tensor)]
    saved = [(m, m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for norm in norms:
        norm.momentum = 0.0
    try:
        yield
    finally:
        for norm, momentum, tracked in saved:
            norm.momentum = momentum
            norm.num_batches_tracked.copy_(tracked)


class DistillBrain(sb.Brain):
    """``sb.Brain`` that trains ``modules.model`` from a frozen teacher (or a teacher cache).

    Keyword arguments beyond SpeechBrain's: ``teacher`` (a ``Teacher``, kept outside
    ``self.modules``), ``kd_losses``/``kd_weights`` (the KD terms, adapters optimised and
    checkpointed with the student), ``student_taps`` (name -> dotted path of student features),
    ``teacher_cache`` (a ``TeacherCache`` replacing the live teacher), ``history_file`` (JSON list
    of per-epoch statistics, for curves and the results table), ``augmentation`` (the run's
    :class:`~kd_modules.augment.AugmentPolicy`, whose masks :meth:`augment_features` applies in
    training) and ``view_replay`` (the :class:`~kd_modules.replay.ViewReplay` whose views a
    cached KD run replays; told the epoch). With no teacher and no cache it is a plain supervised
    Brain (teachers and students-alone use it too).
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
        history_file: str | Path | None = None,
        augmentation: AugmentPolicy | None = None,
        view_replay: ViewReplay | None = None,
    ) -> None:
        modules = dict(modules or {})
        if "model" not in modules:
            raise ValueError("DistillBrain trains modules['model']: no 'model' in modules")
        kd_objective = KDObjective(kd_losses or {}, kd_weights or {})
        modules["kd_objective"] = kd_objective
        self.progress = StageProgress()
        if checkpointer is not None:
            if any(True for _ in kd_objective.parameters()):
                checkpointer.add_recoverable("kd_objective", kd_objective)
            checkpointer.add_recoverable("stage_progress", self.progress, optional_load=True)
        super().__init__(modules, opt_class, hparams or {}, run_opts, checkpointer)
        self.teacher = teacher.to(self.device) if teacher is not None else None
        self.teacher_cache = teacher_cache
        self.augmentation = augmentation
        self.view_replay = view_replay
        self.distilling = bool(kd_objective.losses)
        self._student_paths = dict(student_taps or {})
        self._student_taps: FeatureTaps | None = None
        self.history_file = Path(history_file) if history_file else None
        self.train_epochs_run = 0  # epochs trained by this process (0 when resuming a finished run)
        self._step_terms: dict[str, tuple[float, float]] = {}  # name -> (weight, weighted value)
        self.mixing: tuple[float, torch.Tensor] | None = None  # mixup of the current batch

    @property
    def skipped_clips(self) -> int:
        """Unreadable clips dropped in the current stage."""
        return self.progress.skipped

    @skipped_clips.setter
    def skipped_clips(self, value: int) -> None:
        self.progress.skipped = value

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

    # ----- forward passes -------------------------------------------------------------------
    def student_forward(
        self, feats: torch.Tensor, lens: torch.Tensor, placeholder: bool = False
    ) -> dict:
        """The student's outputs (``logits``, ``embedding``, ...) plus its tapped features.

        A ``placeholder`` batch (see ``placeholder_loss``) leaves norm running statistics alone.
        """
        if self._student_taps is None:  # after DDP wrapping, on the module that really runs
            self._student_taps = FeatureTaps(unwrap_module(self.modules.model), self._student_paths)
        with running_stats_kept(self.modules.model, keep=placeholder):
            outputs = dict(self.modules.model(feats, lens))
        outputs.update(self._student_taps.features)
        return outputs

    def augment_waveforms(self, batch, wavs: torch.Tensor, lens: torch.Tensor, stage) -> tuple:
        """Training waveforms ``(B, S)`` through the run's random crop: ``(wavs, lens)``.

        A batch that replays cached views crops at their stored starts; otherwise each start is
        drawn afresh (the run's seeded generator) inside the clip's own samples.
        """
        policy = self.augmentation
        if stage != sb.Stage.TRAIN or policy is None or not policy.crop_samples:
            return wavs, lens
        n_samples = (lens * wavs.shape[1]).round().long()
        stored = getattr(batch, "aug_params", None)
        if stored is not None:
            starts = stored.data[:, 0]
        else:
            starts = torch.tensor([policy.draw_crop(None, int(n)) for n in n_samples])
        return policy.crop_batch(wavs, n_samples, starts)

    def augment_features(self, batch, feats: torch.Tensor, lens: torch.Tensor, stage):
        """Training features ``(B, T, F)`` through the run's time/frequency masks.

        A batch that replays cached views carries their stored parameters (``aug_params``,
        ``(B, P)``), so the student gets exactly the teacher's view; otherwise masks are drawn
        afresh (from the run's seeded generator) inside each clip's valid frames.
        """
        if stage != sb.Stage.TRAIN or self.augmentation is None:
            return feats
        stored = getattr(batch, "aug_params", None)
        if stored is not None:
            params = stored.data
        else:
            params = self.augmentation.live_masks(lens, feats.shape[1], feats.shape[2])
        return self.augmentation.mask(feats, params)

    def draw_mixup(self, stage, batch_size: int) -> tuple[float, torch.Tensor] | None:
        """``(λ, pairing)`` for mixup in training (hparam ``mixup_alpha`` > 0), else None."""
        alpha = float(getattr(self.hparams, "mixup_alpha", 0.0) or 0.0)
        if stage != sb.Stage.TRAIN or alpha <= 0 or batch_size < 2:
            return None
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        return lam, torch.randperm(batch_size, device=self.device)

    def teacher_forward(
        self,
        ids: list[str],
        feats: torch.Tensor,
        lens: torch.Tensor,
        placeholder: bool = False,
        batch=None,
        mixing: tuple[float, torch.Tensor] | None = None,
        targets: torch.Tensor | None = None,
    ) -> dict:
        """The teacher's outputs for the batch: from the cache when there is one, else live.

        Cached outputs come with the batch (``teacher_<name>``, read by the data pipeline for the
        epoch's view; :mod:`kd_modules.replay`); without a ``batch`` they are looked up by id (view
        0). With ``mixing`` (mixup's λ and pairing) the live teacher sees the mixed ``feats`` as the
        student does, and cached outputs are mixed with the same λ and pairing. For a
        ``placeholder`` batch the cache gives zeros shaped like one cached utterance's outputs,
        ``(B, ...)``: its loss is multiplied by 0, so only shapes matter. ``targets`` (the
        batch's classes ``(B,)``) go to a live teacher whose outputs depend on them
        (:class:`~kd_modules.teacher.IntegratedTeacher`).
        """
        cache = self.teacher_cache
        if cache is None:
            if self.teacher is None:
                raise RuntimeError("teacher_forward called but this Brain has no teacher")
            if targets is not None:
                return self.teacher(feats, lens, targets)
            return self.teacher(feats, lens)
        if placeholder:
            example = cache.example()
            return {
                name: value.new_zeros(len(ids), *value.shape).to(self.device)
                for name, value in example.items()
            }
        if batch is not None and hasattr(batch, f"teacher_{cache.names[0]}"):
            outputs = {name: getattr(batch, f"teacher_{name}").data for name in cache.names}
            outputs = {name: value.to(self.device).float() for name, value in outputs.items()}
        else:
            outputs = cache.lookup(ids, self.device)
        return mix(outputs, *mixing) if mixing is not None else outputs

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
            self._step_terms[f"kd_{name}"] = (weights[name], float(weighted.detach()))
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

    def on_fit_batch_end(self, batch, outputs, loss, should_step: bool) -> None:
        """Stop as soon as an update made the student's parameters non-finite, naming the term.

        A finite but huge weighted term (``--alpha 1e38``) overflows the gradients, not the loss:
        the parameters turn NaN and the *next* step's first term (``ce``) would take the blame.
        The step's largest weighted term is named, with its weight. (Under fp16 the GradScaler
        skips such updates, so the parameters stay finite and nothing is raised.)
        """
        if not should_step:
            return
        finite = [p.isfinite().all() for p in self.modules.parameters() if p.requires_grad]
        if not finite or bool(torch.stack(finite).all()):
            return
        terms = sorted(self._step_terms.items(), key=lambda item: -abs(item[1][1]))
        listed = ", ".join(
            f"{name} = {value:.3g} (weight {weight:g})" for name, (weight, value) in terms
        )
        culprit, (weight, _) = terms[0]
        raise FloatingPointError(
            f"Loss term '{culprit}' with weight {weight:g} made the update non-finite (epoch "
            f"{getattr(self, 'epoch', '?')}, step {self.step}; this step's weighted terms: "
            f"{listed}): stopping instead of training through it. Lower this term's weight."
        )

    def placeholder_loss(
        self, task_loss: torch.Tensor, student_out: dict, teacher_out: dict | None, lens, targets
    ) -> torch.Tensor:
        """Exactly 0, from the same graph as a real batch's loss, for a placeholder batch.

        A placeholder stands for a batch whose clips were all unreadable (``SkipBadCollate``).
        ``task_loss`` plus every KD term (through ``modules.kd_objective``, when ``teacher_out`` is
        given), times 0: under DDP this rank runs the same forward passes as the others and joins
        the same gradient all-reduce, contributing zero gradients. Nothing is logged.
        """
        loss = task_loss
        if teacher_out is not None:
            terms = self.modules.kd_objective(student_out, teacher_out, lens, targets)
            loss = loss + sum(terms.values())
        return loss * 0.0

    # ----- bookkeeping ----------------------------------------------------------------------
    def count_skipped(self, batch) -> None:
        """Add the batch's unreadable clips (dropped by the collate function) to the count."""
        skipped = getattr(batch, "skipped", 0)
        if skipped:
            self.skipped_clips += skipped
            logger.warning("Skipped unreadable clips: %s", getattr(batch, "skipped_ids", skipped))

    def log_terms(self, **terms: torch.Tensor) -> None:
        """Accumulate loss terms for the epoch means; a non-finite term stops the run."""
        for name, value in terms.items():
            number = float(value.detach())
            if not math.isfinite(number):
                raise FloatingPointError(
                    f"Loss term '{name}' is {number} (epoch {getattr(self, 'epoch', '?')}, "
                    f"step {self.step}): stopping instead of training through it. Lower the "
                    "learning rate or this term's weight, or check the inputs."
                )
            self.progress.sums[name] += number
            self.progress.counts[name] += 1
            if not name.startswith("kd_"):  # task terms enter the loss with weight 1
                self._step_terms[name] = (1.0, number)

    def term_means(self) -> dict[str, float]:
        """Mean of every logged term over the current stage."""
        sums, counts = self.progress.sums, self.progress.counts
        return {name: sums[name] / counts[name] for name in sums}

    def on_stage_start(self, stage: sb.Stage, epoch: int | None = None) -> None:
        """Reset term accumulators, the skipped-clip count and the stage timer.

        A training epoch resumed from an intra-epoch checkpoint (SpeechBrain restored a non-zero
        ``step``) continues the sums saved with it instead.
        """
        self.progress.reset(epoch)
        if stage == sb.Stage.TRAIN and self.view_replay is not None:
            self.view_replay.epoch = epoch  # before the loader forks its workers for the epoch
        if stage == sb.Stage.TRAIN and self.step > 0 and self.progress.resume(epoch):
            logger.info("Epoch %s resumed at step %d with its term sums", epoch, self.step)
        self.epoch = epoch

    def finish_epoch(self, stage: sb.Stage, epoch: int | None, stats: dict) -> float:
        """Append the stage's statistics and wall time to the history file; return the time."""
        elapsed = self.progress.elapsed_s()
        if stage == sb.Stage.TRAIN:
            self.train_epochs_run += 1
        if self.history_file is None or stage == sb.Stage.TEST or not if_main_process():
            return elapsed
        history = []
        if self.history_file.is_file():
            history = json.loads(self.history_file.read_text())
        stage_name = stage.name.lower()
        history = [h for h in history if not (h["stage"] == stage_name and h["epoch"] >= epoch)]
        history.append({"stage": stage_name, "epoch": epoch, "time_s": elapsed, "stats": stats})
        write_json_atomic(self.history_file, history)
        return elapsed

    # ----- distributed ----------------------------------------------------------------------
    def _train_loader_specifics(self, dataset, loader_kwargs: dict) -> dict:
        """SpeechBrain's training-loader set-up, with a DDP sampler seeded by the run's seed.

        SpeechBrain's DistributedSampler keeps torch's default seed 0, so under DDP ``--seed``
        would not change the data order. Every rank reads the same seed, so the ranks still
        shuffle with one permutation and take disjoint shards of it; ``set_epoch`` still
        reshuffles every epoch.
        """
        loader_kwargs = super()._train_loader_specifics(dataset, loader_kwargs)
        if isinstance(self.train_sampler, DistributedSampler):
            self.train_sampler.seed = self.data_seed()
        return loader_kwargs

    def data_seed(self) -> int:
        """The seed of the training data order: hparams ``seed``, else SpeechBrain's own
        (``SB_GLOBAL_SEED``, which seeds the single-process sampler, with its default)."""
        seed = getattr(self.hparams, "seed", None)
        return int(os.environ.get("SB_GLOBAL_SEED", 563375142) if seed is None else seed)

    def _wrap_distributed(self) -> None:
        """DDP on CPU (gloo) without SyncBatchNorm, which PyTorch only supports on accelerators.

        Buffers are not broadcast at each forward: plain BatchNorm saves its running statistics
        for the backward, and a step that runs the model twice (IML-KD's second pass on the
        integrated input) would have them overwritten in place on ranks > 0 between the forward
        and the backward (autograd's "modified by an inplace operation"). Each rank keeps its own
        running statistics; the checkpoint holds rank 0's.
        """
        if self.distributed_launch and torch.device(self.device).type == "cpu":
            for name, module in self.modules.items():
                if any(p.requires_grad for p in module.parameters()):
                    self.modules[name] = DistributedDataParallel(
                        module,
                        find_unused_parameters=self.find_unused_parameters,
                        broadcast_buffers=False,
                    )
            return
        super()._wrap_distributed()
