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
import time
from collections import defaultdict
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.utils.distributed import if_main_process
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from kd_modules.cache import TeacherCache
from kd_modules.dataio import write_json_atomic
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


def unwrap_module(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return module.module if isinstance(module, DistributedDataParallel) else module


class DistillBrain(sb.Brain):
    """``sb.Brain`` that trains ``modules.model`` from a frozen teacher (or a teacher cache).

    Keyword arguments beyond SpeechBrain's: ``teacher`` (a ``Teacher``, kept outside
    ``self.modules``), ``kd_losses``/``kd_weights`` (the KD terms, adapters optimised and
    checkpointed with the student), ``student_taps`` (name -> dotted path of student features),
    ``teacher_cache`` (a ``TeacherCache`` replacing the live teacher), ``history_file`` (JSON list
    of per-epoch statistics, for curves and the results table). With no teacher and no cache it
    is a plain supervised Brain (teachers and students-alone use it too).
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
    ) -> None:
        modules = dict(modules or {})
        if "model" not in modules:
            raise ValueError("DistillBrain trains modules['model']: no 'model' in modules")
        kd_objective = KDObjective(kd_losses or {}, kd_weights or {})
        modules["kd_objective"] = kd_objective
        if checkpointer is not None and any(True for _ in kd_objective.parameters()):
            checkpointer.add_recoverable("kd_objective", kd_objective)
        super().__init__(modules, opt_class, hparams or {}, run_opts, checkpointer)
        self.teacher = teacher.to(self.device) if teacher is not None else None
        self.teacher_cache = teacher_cache
        self.distilling = bool(kd_objective.losses)
        self._student_paths = dict(student_taps or {})
        self._student_taps: FeatureTaps | None = None
        self.history_file = Path(history_file) if history_file else None
        self.skipped_clips = 0  # unreadable clips dropped in the current stage
        self.train_epochs_run = 0  # epochs trained by this process (0 when resuming a finished run)
        self._term_sums: dict[str, float] = defaultdict(float)
        self._term_counts: dict[str, int] = defaultdict(int)
        self._stage_start = time.perf_counter()

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
    def student_forward(self, feats: torch.Tensor, lens: torch.Tensor) -> dict:
        """The student's outputs (``logits``, ``embedding``, ...) plus its tapped features."""
        if self._student_taps is None:  # after DDP wrapping, on the module that really runs
            self._student_taps = FeatureTaps(unwrap_module(self.modules.model), self._student_paths)
        outputs = dict(self.modules.model(feats, lens))
        outputs.update(self._student_taps.features)
        return outputs

    def teacher_forward(self, ids: list[str], feats: torch.Tensor, lens: torch.Tensor) -> dict:
        """The teacher's outputs for the batch: from the cache when there is one, else live."""
        if self.teacher_cache is not None:
            return self.teacher_cache.lookup(ids, self.device)
        if self.teacher is None:
            raise RuntimeError("teacher_forward called but this Brain has no teacher")
        return self.teacher(feats, lens)

    def distill_loss(self, student_out: dict, teacher_out: dict, lens, targets) -> torch.Tensor:
        """Weighted sum of the KD terms; each term is logged by name (``kd_<name>``)."""
        terms = self.modules.kd_objective(student_out, teacher_out, lens, targets)
        weights = unwrap_module(self.modules.kd_objective).weights
        self.log_terms(**{f"kd_{name}": value for name, value in terms.items()})
        return sum(weights[name] * value for name, value in terms.items())

    def zero_loss(self) -> torch.Tensor:
        """A zero loss attached to the student's graph, for a batch whose clips were all bad."""
        return sum(p.sum() for p in self.modules.model.parameters()) * 0.0

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
            self._term_sums[name] += number
            self._term_counts[name] += 1

    def term_means(self) -> dict[str, float]:
        """Mean of every logged term over the current stage."""
        return {name: self._term_sums[name] / self._term_counts[name] for name in self._term_sums}

    def on_stage_start(self, stage: sb.Stage, epoch: int | None = None) -> None:
        """Reset term accumulators, the skipped-clip count and the stage timer."""
        self.skipped_clips = 0
        self._term_sums.clear()
        self._term_counts.clear()
        self._stage_start = time.perf_counter()
        self.epoch = epoch

    def finish_epoch(self, stage: sb.Stage, epoch: int | None, stats: dict) -> float:
        """Append the stage's statistics and wall time to the history file; return the time."""
        elapsed = time.perf_counter() - self._stage_start
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
    def _wrap_distributed(self) -> None:
        """DDP on CPU (gloo) without SyncBatchNorm, which PyTorch only supports on accelerators."""
        if self.distributed_launch and torch.device(self.device).type == "cpu":
            for name, module in self.modules.items():
                if any(p.requires_grad for p in module.parameters()):
                    self.modules[name] = DistributedDataParallel(
                        module, find_unused_parameters=self.find_unused_parameters
                    )
            return
        super()._wrap_distributed()
