#!/usr/bin/env python3
"""Stage 3: run the frozen teacher once over seeded views of the training clips and cache them.

Takes the same arguments as a KD run of train.py (the composition names the teacher folder, its
taps, the feature settings and the augmentation policy); writes
``<exp_root>/cache/<fingerprint>-<settings>/`` (sharded, see kd_modules.cache), which a KD run
with ``--use_teacher_cache True`` reads instead of running the teacher. ``--check_cache N``
re-runs the live teacher on N cached clips and fails on any difference.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from kd_modules.hparams import run_main
from kd_modules.stages.cache import run_cache_stage
from recipes.sound_classification.train import dataio_prepare

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(name)s - %(message)s")
    common = Path(__file__).resolve().parent / "hparams" / "common.yaml"
    run_main(lambda argv: print(run_cache_stage(argv, dataio_prepare, common)), sys.argv[1:])
