#!/usr/bin/env python3
"""Stage 6, data-free KD for tagging: synthesise a pool of log-Mel spectrograms with multi-hot tag
sets from the tagging teacher, then distil a student on the pool alone (validated and tested on
the real clips).

    python synthesize.py hparams/common.yaml hparams/student/crnn.yaml \
        hparams/synthesis/frami.yaml hparams/kd/frami.yaml --data_folder data/sonyc_ust \
        --n_outputs 37 --teacher_folder exp/sonyc_ust/teacher/cnn10/none/seed1 \
        --pool_folder exp/sonyc_ust/pool/cnn10_seed1/frami/seed1 \
        --output_folder exp/sonyc_ust/student/crnn/frami/seed1

Each synthetic clip's targets are a tag set (:func:`plan_of`: the sampling rule is ours, README
"Data-free KD"), the inversion's task term is BCE (``multi_label: True`` in
hparams/synthesis/*.yaml), and the student learns from the teacher's sigmoid outputs on the pool
(``kd_modules.brains.datafree.DataFreeTaggingBrain``). The pool and its resume, DDP and
results are the library's stage 6 (``kd_modules.stages.datafree``), shared with sound
classification. ``--test_only`` evaluates a finished run (stage 7), ``--skip_test True`` trains
only.
"""

from __future__ import annotations

import sys

from kd_modules.brains import TagLayout
from kd_modules.brains.datafree import DataFreeTaggingBrain
from kd_modules.experiment import Recipe, build_brain, run_experiment
from kd_modules.hparams import run_main
from kd_modules.stages.datafree import PoolRun, live_teacher
from kd_modules.synthesis import PoolBatch, tag_set_plan
from recipes.audio_tagging.train import dataio_prepare, splits, write_run_results


def coarse_of_fine(layout: TagLayout) -> dict[int, list[int]]:
    """Each fine output (X tags included) -> the coarse output it belongs to (its column in the
    K outputs: fine tags first, then coarse classes)."""
    implies = {}
    for coarse, entry in enumerate(layout.fine_taxonomy):
        tags = [*entry["complete"], *([] if entry["incomplete"] is None else [entry["incomplete"]])]
        for tag in tags:
            implies[tag] = [len(layout.fine) + coarse]
    return implies


def plan_of(hparams: dict) -> list[PoolBatch]:
    """The pool's batches: every fine tag leads ``samples_per_tag`` clips, each with up to
    ``max_tags_per_clip`` fine tags and their coarse classes switched on (ours)."""
    layout = TagLayout.from_json(hparams["labels_file"])
    return tag_set_plan(
        layout.n_outputs,
        hparams["samples_per_tag"],
        hparams["synthesis_batch_size"],
        hparams["min_frames"],
        hparams["max_frames"],
        hparams["synthesis_seed"],
        max_tags_per_clip=hparams["max_tags_per_clip"],
        candidates=list(range(len(layout.fine))),
        implies=coarse_of_fine(layout),
    )


def make_brain(hparams: dict, run_opts: dict, teacher=None, cache=None) -> DataFreeTaggingBrain:
    """The data-free tagger's Brain (the teacher live, never a cache; the prepared layout)."""
    hparams["tag_layout"] = TagLayout.from_json(hparams["labels_file"])
    return build_brain(DataFreeTaggingBrain, hparams, run_opts, teacher)


def main(argv: list[str] | None = None) -> None:
    run = PoolRun(plan_of, write_run_results)
    recipe = Recipe(
        dataio_prepare,
        make_brain,
        run.write_results,
        splits=splits,
        teacher_side=live_teacher,
        prepare_run=run.prepare,
    )
    run_experiment(argv, recipe)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
