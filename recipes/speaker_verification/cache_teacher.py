#!/usr/bin/env python3
"""Stage 3: run the frozen teacher once over seeded crops of the training segments and cache it.

Takes the same arguments as a KD run of train.py. For IML-KD compositions (an
``integrated_input`` in the KD YAML) the cached teacher is the IntegratedTeacher: each crop's
integrated-gradients weight map (``ig_weight``, half precision, sharded on disk: never loaded
whole) and the teacher's outputs on that crop's integrated input are stored, keyed by segment
id, view and the teacher's fingerprint with the attribution settings; ranks of torchrun share
the segments. ``--check_cache N`` re-runs the live teacher on N cached segments.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from kd_modules.hparams import run_main
from kd_modules.stages.cache import run_cache_stage
from recipes.speaker_verification.train import dataio_prepare

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(name)s - %(message)s")
    common = Path(__file__).resolve().parent / "hparams" / "common.yaml"
    run_main(lambda argv: print(run_cache_stage(argv, dataio_prepare, common)), sys.argv[1:])
