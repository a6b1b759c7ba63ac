"""What a training or evaluation stage records: its loss terms, skipped clips, time and history.

:class:`StageLog` keeps the running sums of the current stage (checkpointed with the student) and
stops the run on a non-finite term or update, naming the term; :class:`History` appends each
epoch's statistics to the run's ``history.json`` (curves, the results table). A brain owns one
of each and tells them when a stage starts and ends; with the YAML key ``tensorboard: True`` it
also writes the same statistics as TensorBoard events (:class:`EpochTensorboardLogger`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks
from speechbrain.utils.distributed import if_main_process, main_process_only
from speechbrain.utils.train_logger import TensorboardLogger

from kd_modules.dataio import write_json_atomic

logger = logging.getLogger(__name__)


@register_checkpoint_hooks
class StageLog:
    """Running sums of the current stage (loss terms, skipped clips, compute time).

    Checkpointed with the student, so a run resumed from an intra-epoch checkpoint logs the mean
    of each term over the whole epoch (as SpeechBrain's own ``avg_train_loss`` is) and an epoch
    time that covers the steps before the kill, instead of only the steps after the resume. The
    current step's weighted terms (``step_terms``, name -> (weight, weighted value)) name the
    culprit when an update turns the parameters non-finite.
    """

    def __init__(self) -> None:
        self.reset(None)
        self.restored: dict | None = None  # loaded from an intra-epoch checkpoint, not yet used
        self.step_terms: dict[str, tuple[float, float]] = {}

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

    def log(self, step: int, **terms: torch.Tensor) -> None:
        """Accumulate loss terms (scalars) for the epoch means; a non-finite term stops the run."""
        for name, value in terms.items():
            number = float(value.detach())
            if not math.isfinite(number):
                raise FloatingPointError(
                    f"Loss term '{name}' is {number} ({self.where(step)}): stopping instead of "
                    "training through it. Lower the learning rate or this term's weight, or "
                    "check the inputs."
                )
            self.sums[name] += number
            self.counts[name] += 1
            if not name.startswith("kd_"):  # task terms enter the loss with weight 1
                self.step_terms[name] = (1.0, number)

    def means(self) -> dict[str, float]:
        """Mean of every logged term over the current stage."""
        return {name: self.sums[name] / self.counts[name] for name in self.sums}

    def count_skipped(self, batch) -> None:
        """Add the batch's unreadable clips (dropped by the collate function) to the count."""
        skipped = getattr(batch, "skipped", 0)
        if skipped:
            self.skipped += skipped
            logger.warning("Skipped unreadable clips: %s", getattr(batch, "skipped_ids", skipped))

    def check_update(self, parameters: Iterable[torch.nn.Parameter], step: int) -> None:
        """Stop as soon as an update made the trained ``parameters`` non-finite, naming the term.

        A finite but huge weighted term (``--alpha 1e38``) overflows the gradients, not the loss:
        the parameters turn NaN and the *next* step's first term (``ce``) would take the blame.
        The step's largest weighted term is named, with its weight. (Under fp16 the GradScaler
        skips such updates, so the parameters stay finite and nothing is raised.)
        """
        finite = [p.isfinite().all() for p in parameters if p.requires_grad]
        if not finite or bool(torch.stack(finite).all()):
            return
        terms = sorted(self.step_terms.items(), key=lambda item: -abs(item[1][1]))
        listed = ", ".join(
            f"{name} = {value:.3g} (weight {weight:g})" for name, (weight, value) in terms
        )
        culprit, (weight, _) = terms[0]
        raise FloatingPointError(
            f"Loss term '{culprit}' with weight {weight:g} made the update non-finite "
            f"({self.where(step)}; this step's weighted terms: {listed}): stopping instead of "
            "training through it. Lower this term's weight."
        )

    def where(self, step: int) -> str:
        """``epoch E, step S`` for messages (``?`` before the first stage)."""
        return f"epoch {'?' if self.epoch is None else self.epoch}, step {step}"

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


class History:
    """The run's ``history.json``: a JSON list of ``{stage, epoch, time_s, stats}``, one entry per
    training and validation epoch, rewritten atomically by the main process (``path`` None: off).
    """

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None

    def record(self, stage: sb.Stage, epoch: int | None, time_s: float, stats: dict) -> None:
        """Add the stage's entry; a re-run epoch (after a resume) replaces its entry and later ones.
        The test stage is not recorded (its statistics go to results.json)."""
        if self.path is None or stage == sb.Stage.TEST or not if_main_process():
            return
        history = json.loads(self.path.read_text()) if self.path.is_file() else []
        name = stage.name.lower()
        history = [h for h in history if not (h["stage"] == name and h["epoch"] >= epoch)]
        history.append({"stage": name, "epoch": epoch, "time_s": time_s, "stats": stats})
        write_json_atomic(self.path, history)


class EpochTensorboardLogger(TensorboardLogger):
    """SpeechBrain's ``TensorboardLogger`` (the ``tensorboard`` package's writer, on the main
    process, events under ``save_dir``) with every scalar at its epoch.

    SpeechBrain's counts its own calls from 1 in each process, so a resumed run would draw its
    later epochs over its first ones; here ``stats_meta["epoch"]`` is the step of every scalar:
    the meta values (``lr``) under their names and each statistic (loss, every KD term, the
    metrics) as ``<name>/<train|valid|test>``, as SpeechBrain tags them. Non-numeric values
    are left out.
    """

    @main_process_only
    def log_stats(
        self, stats_meta, train_stats=None, valid_stats=None, test_stats=None, verbose=False
    ) -> None:
        step = int(stats_meta["epoch"])
        scalars = {name: value for name, value in stats_meta.items() if name != "epoch"}
        for stage, stats in (("train", train_stats), ("valid", valid_stats), ("test", test_stats)):
            scalars.update({f"{name}/{stage}": value for name, value in (stats or {}).items()})
        for tag, value in scalars.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(tag, value, step)
        self.writer.flush()
