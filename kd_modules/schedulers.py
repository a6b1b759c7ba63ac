"""Learning-rate schedules with the ``lr_annealing`` interface of the recipes' Brains.

A Brain calls ``old, new = lr_annealing(valid_loss)`` once per validation and sets ``new`` on
its optimiser (SpeechBrain's :class:`~speechbrain.nnet.schedulers.NewBobScheduler` convention).
NewBob halves the rate whenever the validation loss stops improving; for data-free KD that is
wrong: the student trains on synthetic samples while the loss is measured on real clips, which
often does not fall even as the student improves, so NewBob decays the rate to nothing within a
few epochs. :class:`EpochCosine` follows a fixed cosine over the epochs instead, ignoring the
metric. It is a checkpoint recoverable, so a resumed run continues the same curve.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks


@register_checkpoint_hooks
class EpochCosine:
    """Cosine decay from ``initial_value`` to ``final_ratio × initial_value`` over ``epochs``.

    The n-th call (n = 1, 2, ...) returns ``(value before, value after n epochs)``, where the value
    after n epochs is ``final + (initial − final)·(1 + cos(π·min(n, epochs)/epochs))/2``. The
    argument (a validation loss) is ignored. ``epochs`` should equal the run's number of epochs.
    """

    def __init__(self, initial_value: float, epochs: int, final_ratio: float = 0.0) -> None:
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if not 0.0 <= final_ratio <= 1.0:
            raise ValueError(f"final_ratio must be in [0, 1], got {final_ratio}")
        self.initial_value, self.epochs, self.final_ratio = initial_value, epochs, final_ratio
        self.calls = 0

    def value_at(self, epoch: int) -> float:
        """The learning rate after ``epoch`` completed epochs."""
        final = self.initial_value * self.final_ratio
        progress = min(epoch, self.epochs) / self.epochs
        return final + (self.initial_value - final) * (1 + math.cos(math.pi * progress)) / 2

    def __call__(self, metric_value: float | None = None) -> tuple[float, float]:
        old = self.value_at(self.calls)
        self.calls += 1
        return old, self.value_at(self.calls)

    @mark_as_saver
    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"calls": self.calls}))

    @mark_as_loader
    def load(self, path: str | Path, end_of_epoch: bool = False) -> None:
        self.calls = int(json.loads(Path(path).read_text())["calls"])
