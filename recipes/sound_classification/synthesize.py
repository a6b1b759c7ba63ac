#!/usr/bin/env python3
"""Stage 6, data-free KD: synthesise a pool of log-Mel spectrograms from the teacher, then distil
a student on the pool alone (validated and tested on real clips).

    python synthesize.py hparams/common.yaml hparams/student/xvector_small.yaml \
        hparams/synthesis/frami.yaml hparams/kd/frami.yaml --data_folder data/fsdd/fold1 \
        --n_classes 10 --teacher_folder exp/fsdd/fold1/teacher/xvector_large/none/seed1 \
        --pool_folder exp/fsdd/fold1/pool/xvector_large_seed1/frami/seed1 \
        --output_folder exp/fsdd/fold1/student/xvector_small/frami/seed1

The pool (``kd_modules.synthesis.pool``; the stage's hooks: ``kd_modules.stages.datafree``) is
built once per synthesiser, teacher and seed and shared by the methods that use it (FRAMI with
and without hidden-state reuse); a killed synthesis resumes at its first unwritten batch, exactly
(the synthesiser's state is saved with each batch). Under torchrun each rank synthesises its
share of the pool and the KD runs as DDP. The real
training clips are never read here: only the teacher saw them. ``--test_only`` evaluates a
finished run (stage 7), ``--skip_test True`` trains only.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from speechbrain.dataio.dataset import DynamicItemDataset

from kd_modules.brains.datafree import DataFreeBrain
from kd_modules.experiment import Recipe, build_brain, run_experiment
from kd_modules.hparams import run_main
from kd_modules.stages.datafree import PoolRun, live_teacher
from kd_modules.synthesis import pool_plan
from kd_modules.synthesis.figures import REAL_EXAMPLES
from recipes.sound_classification.train import SPLITS, dataio_prepare, write_run_results

logger = logging.getLogger(__name__)


def plan_of(hparams: dict) -> list:
    """The pool's batches, from its keys."""
    return pool_plan(
        hparams["n_classes"],
        hparams["samples_per_class"],
        hparams["synthesis_batch_size"],
        hparams["min_frames"],
        hparams["max_frames"],
        hparams["synthesis_seed"],
    )


def save_real_examples(hparams: dict, dataset: DynamicItemDataset, folder: Path) -> None:
    """Features (T, F) of the first validation clip of each class, beside the pool (for its
    figure: ``kd_modules.synthesis.figures``)."""
    examples = {}
    for index in range(len(dataset)):
        item = dataset[index]
        label = int(item["label_id"])
        if label not in examples and item["sig"].numel():
            wav = item["sig"].unsqueeze(0)
            feats = hparams["front_end"](wav, torch.ones(1))
            examples[label] = feats[0]
    torch.save(examples, folder / REAL_EXAMPLES)


def make_brain(hparams: dict, run_opts: dict, teacher=None, cache=None) -> DataFreeBrain:
    """The data-free student's Brain (the teacher live, never a cache)."""
    return build_brain(DataFreeBrain, hparams, run_opts, teacher)


def main(argv: list[str] | None = None) -> None:
    run = PoolRun(plan_of, write_run_results, on_complete=save_real_examples)
    recipe = Recipe(
        dataio_prepare,
        make_brain,
        run.write_results,
        splits=lambda hparams: SPLITS,
        teacher_side=live_teacher,
        prepare_run=run.prepare,
    )
    run_experiment(argv, recipe)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
