#!/usr/bin/env python3
"""Stage 3: run the frozen teacher once over the training clips and cache its outputs.

Takes the same arguments as a KD run of train.py (the composition names the teacher folder, its
taps and the feature settings); writes ``<exp_root>/cache/<fingerprint>-<settings>/`` which a KD
run with ``--use_teacher_cache True`` reads instead of running the teacher every epoch.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from speechbrain.dataio.dataloader import make_dataloader
from train import dataio_prepare

from kd_modules.brains.classification import filterbanks
from kd_modules.cache import build_teacher_cache
from kd_modules.dataio import SkipBadCollate
from kd_modules.experiment import folder_lock, load_teacher, teacher_cache_folder
from kd_modules.hparams import load_composed, parse_recipe_arguments, run_main

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> Path:
    files, run_opts, overrides = parse_recipe_arguments(argv)
    hparams = load_composed(files, overrides)
    if hparams["method"] == "none":
        raise SystemExit("cache_teacher.py needs a KD composition (kd/*.yaml with a teacher)")
    device = run_opts["device"]
    teacher = load_teacher(hparams).to(device)
    folder = teacher_cache_folder(hparams, teacher)
    loader = make_dataloader(
        dataio_prepare(hparams)["train"],
        batch_size=1,
        num_workers=hparams["num_workers"],
        collate_fn=SkipBadCollate(),
    )

    def features(batch) -> tuple[torch.Tensor, torch.Tensor]:
        wavs, lens = batch.to(device).sig
        front_end = hparams["compute_features"].to(device)
        return filterbanks(front_end, hparams["normalize"], wavs, lens), lens

    settings = {
        "feature_settings": hparams["feature_settings"],
        "teacher_taps": hparams["teacher_taps"],
        "teacher_folder": str(hparams["teacher_folder"]),
        "teacher_checkpoint": teacher.checkpoint,
    }
    with folder_lock(folder, what="teacher cache folder"):
        build_teacher_cache(teacher, {"train": loader}, features, folder, settings)
    logger.info("Teacher cache ready: %s", folder)
    print(folder)
    return folder


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(name)s - %(message)s")
    run_main(main, sys.argv[1:])
