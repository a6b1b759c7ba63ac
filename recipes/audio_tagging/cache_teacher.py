#!/usr/bin/env python3
"""Stage 3: run the frozen teacher once over the training clips and cache its outputs.

Takes the same arguments as a KD run of train.py (the composition names the teacher folder, its
taps and the feature settings); the library's cache stage (kd_modules.stages.cache) stores the
logits and the tapped frame features (at the tapped layer's own frame rate) under
``<exp_root>/cache/<fingerprint>-<settings>/``, which a KD run with ``--use_teacher_cache True``
reads instead of running the teacher every epoch.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from kd_modules.hparams import run_main
from kd_modules.stages.cache import run_cache_stage
from recipes.audio_tagging.train import dataio_prepare

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(name)s - %(message)s")
    common = Path(__file__).resolve().parent / "hparams" / "common.yaml"
    run_main(lambda argv: print(run_cache_stage(argv, dataio_prepare, common)), sys.argv[1:])
