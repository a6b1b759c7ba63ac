#!/usr/bin/env python3
"""Train and/or evaluate one sound classifier: a teacher, a student alone, or a KD student.

    python train.py hparams/common.yaml hparams/student/xvector_small.yaml hparams/kd/kd.yaml \
        --data_folder data/fsdd/fold1 --output_folder exp/... --n_classes 10 \
        --teacher_folder exp/.../teacher/xvector_large/none/seed1

The YAML files are composed (kd_modules.hparams); the Brain is the library's ClassificationBrain,
which owns all teacher plumbing. After training, the best-validation checkpoint is evaluated on
the test split and ``results.json`` is written (skip with ``--skip_test True``; evaluate a finished
run with SpeechBrain's ``--test_only`` flag).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.data_pipeline import provides, takes

from kd_modules.brains import ClassificationBrain
from kd_modules.dataio import audio_pipeline
from kd_modules.evaluation import common_results, evaluate_best
from kd_modules.experiment import Recipe, build_brain, run_experiment
from kd_modules.hparams import run_main
from kd_modules.results import write_results

logger = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test")


def dataio_prepare(hparams: dict) -> dict[str, DynamicItemDataset]:
    """Train/valid/test datasets from the stage-1 manifests: ``sig`` and ``label_id``.

    Clips are cut to ``max_duration_s`` from their start; random crops and masks are the Brain's
    (``augmentation``), so that a KD run from the teacher cache can replay the stored views.
    """
    read_and_cut = audio_pipeline(hparams["sample_rate"], hparams["max_duration_s"])

    @takes("label_id")
    @provides("label_id")
    def label_item(label_id: int) -> torch.Tensor:
        return torch.LongTensor([label_id])

    return {
        split: DynamicItemDataset.from_json(
            hparams[f"{split}_annotation"],
            dynamic_items=[read_and_cut, label_item],
            output_keys=["id", "sig", "label_id"],
        )
        for split in SPLITS
    }


def make_brain(hparams: dict, run_opts, teacher=None, cache=None, checkpoints: bool = True):
    """The run's ClassificationBrain; the cache, when given, replaces the live teacher."""
    return build_brain(ClassificationBrain, hparams, run_opts, teacher, cache, checkpoints)


def write_run_results(brain, hparams: dict, datasets: dict, train_info: dict) -> None:
    """Evaluate the best-validation checkpoint on the test split and write results.json."""
    started = time.time()
    if not evaluate_best(brain, datasets["test"], hparams, "accuracy"):
        return
    results = {
        "task": "sound_classification",
        "dataset": hparams["dataset"],
        "metrics": {"accuracy": brain.test_stats["accuracy"]},
        **common_results(brain, hparams, train_info, datasets["test"], "accuracy", started, SPLITS),
        "skipped_test_clips": brain.skipped_clips,
    }
    write_results(Path(hparams["output_folder"]) / "results.json", results)
    logger.info(
        "Test accuracy %.4f -> %s", results["metrics"]["accuracy"], hparams["output_folder"]
    )


def main(argv: list[str] | None = None) -> None:
    run_experiment(argv, Recipe(dataio_prepare, make_brain, write_run_results))


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
