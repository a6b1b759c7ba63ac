"""Multi-label tagging (urban sound tagging): binary cross-entropy + KD terms, DCASE metrics.

Expects batches with ``sig`` (waveforms ``(B, S)`` + relative lengths) and ``targets``
(``(B, K)`` in {0, 1}), and the hparams of :class:`~kd_modules.brains.task.TaskBrain` plus
``tag_layout`` (a :class:`TagLayout`: which of the K outputs are fine tags, X tags and coarse
classes) and ``selection_key`` (the validation metric that keeps the best checkpoint, e.g.
``coarse_micro_auprc``). Outside training it collects every clip's sigmoid scores, computes the
DCASE 2019 Task 5 metrics at the coarse and fine levels and, in the test stage, keeps the scores
(``test_predictions``) for the submission CSV.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import speechbrain as sb
import torch
import torch.nn.functional as F

from kd_modules.brains.task import TaskBrain
from kd_modules.dataio import is_placeholder
from kd_modules.metrics import CoarseClass, dcase_coarse_metrics, dcase_fine_metrics


@dataclass
class TagLayout:
    """The K outputs of a two-level tagger: ``fine`` tag names, then ``coarse`` class names.

    ``fine_taxonomy`` has one entry per coarse class: its complete fine tags and its X tag as
    indices into ``fine`` (see :func:`kd_modules.metrics.dcase_fine_metrics`).
    """

    fine: list[str]
    coarse: list[str]
    fine_taxonomy: list[CoarseClass]

    @classmethod
    def from_json(cls, path: str | Path) -> TagLayout:
        """Read the layout a prepare stage wrote (keys ``fine``, ``coarse``, ``fine_taxonomy``)."""
        layout = json.loads(Path(path).read_text())
        return cls(layout["fine"], layout["coarse"], layout["fine_taxonomy"])

    @property
    def n_outputs(self) -> int:
        return len(self.fine) + len(self.coarse)

    def metrics(self, truth: np.ndarray, scores: np.ndarray) -> tuple[dict, dict]:
        """DCASE metrics of ``(N, K)`` truth and scores: ``{level_metric: value}`` (coarse_ and
        fine_ micro/macro AUPRC and micro-F1) and ``{level: per-class AUPRC list}``."""
        n_fine = len(self.fine)
        levels = {
            "coarse": dcase_coarse_metrics(truth[:, n_fine:], scores[:, n_fine:]),
            "fine": dcase_fine_metrics(truth[:, :n_fine], scores[:, :n_fine], self.fine_taxonomy),
        }
        flat = {
            f"{level}_{name}": value
            for level, result in levels.items()
            for name, value in result.items()
            if name != "class_auprc"
        }
        return flat, {level: result["class_auprc"] for level, result in levels.items()}


def clip_targets(entry: dict, rule: str) -> list[int]:
    """A manifest entry's 0/1 targets ``(K,)``: its verified row when it has one, else the
    annotators' votes by ``rule``: ``any`` (one annotator is enough) or ``majority`` (more
    than half). The recipe's training and evaluation read them so, and so does stage 9."""
    if entry["verified"] is not None:
        return entry["verified"]
    if rule not in ("any", "majority"):
        raise ValueError(f"train_targets must be 'any' or 'majority', not {rule!r}")
    threshold = 0.0 if rule == "any" else 0.5
    return [int(vote > threshold) for vote in entry["votes"]]


class TaggingBrain(TaskBrain):
    """Train a tagger alone, or a student from a teacher; report the DCASE metrics.

    The front end, the forward passes (student, teacher or its cache, placeholders for
    unreadable batches) and the epoch's end are :class:`~kd_modules.brains.task.TaskBrain`'s;
    this class adds the task loss (BCE over every output), the metrics and the selection key.
    """

    def teacher_targets(self, batch) -> torch.Tensor:
        """The batch's 0/1 targets ``(B, K)``, for IML-KD's integrated gradients of the true
        tags' scores (a plain teacher ignores them)."""
        return batch.targets.data.float()

    def compute_objectives(self, predictions, batch, stage: sb.Stage) -> torch.Tensor:
        """BCE (+ weighted KD terms in training); outside training, collect the scores.

        With mixup (``self.mixing``: the inputs were mixed), the BCE targets are mixed alike
        (soft multi-label targets).
        """
        student, teacher, lens, distilled = predictions  # distilled: on x̃ for IML-KD
        targets = batch.targets.data.float()  # (B, K)
        if stage == sb.Stage.TRAIN and self.mixing is not None:
            targets = self.mixing.inputs(targets)
        loss = F.binary_cross_entropy_with_logits(student["logits"].float(), targets)
        loss = self.task_and_kd_loss(batch, {"bce": loss}, distilled, teacher, lens, targets)
        if stage != sb.Stage.TRAIN and not is_placeholder(batch):
            self.scores.append(student["logits"].detach().float().sigmoid().cpu())
            self.truth.append(targets.cpu())
            self.ids.extend(batch.id)
        return loss

    def on_stage_start(self, stage: sb.Stage, epoch: int | None = None) -> None:
        """Reset the stage log and the collected scores."""
        super().on_stage_start(stage, epoch)
        self.scores: list[torch.Tensor] = []
        self.truth: list[torch.Tensor] = []
        self.ids: list[str] = []

    def stage_metrics(self) -> dict:
        """DCASE metrics of the scores collected in this stage (per-class AUPRC kept aside)."""
        if not self.scores:
            return {}
        layout: TagLayout = self.hparams.tag_layout
        truth, scores = torch.cat(self.truth).numpy(), torch.cat(self.scores).numpy()
        metrics, self.class_auprc = layout.metrics(truth, scores)
        return metrics

    def selection_key(self) -> str:
        """hparams ``selection_key`` (e.g. ``coarse_micro_auprc``) keeps the best checkpoint."""
        return self.hparams.selection_key

    def on_stage_end(self, stage: sb.Stage, stage_loss: float, epoch: int | None = None) -> None:
        """TaskBrain's epoch end; in the test stage keep the scores in ``test_predictions``."""
        super().on_stage_end(stage, stage_loss, epoch)
        if stage == sb.Stage.TEST:
            self.test_predictions = (list(self.ids), torch.cat(self.scores).numpy())
