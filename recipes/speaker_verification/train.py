#!/usr/bin/env python3
"""Train one speaker-embedding model: a teacher, a student alone, or a KD student (IML-KD...).

    python train.py hparams/common.yaml hparams/student/ecapa_c256.yaml hparams/kd/imlkd.yaml \
        --data_folder data/voxceleb1 --output_folder exp/... --n_speakers 1211 \
        --teacher_folder exp/voxceleb1/teacher/ecapa_c1024/none/seed1

The YAML files are composed (kd_modules.hparams); the Brain is the library's SpeakerBrain (AAM
softmax on fixed-length crops of the training segments; speaker-ID accuracy on the validation
segments selects the checkpoint) and the run's skeleton is kd_modules.experiment's. After
training, the best checkpoint is verified on the trial list (verify.py: embeddings, cosine
scoring, S-norm / AS-norm, EER and minDCF into results.json); skip with ``--skip_test True``.
"""

from __future__ import annotations

import sys

import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.data_pipeline import provides, takes

from kd_modules.brains import SpeakerBrain
from kd_modules.dataio import audio_pipeline, segment_pipeline
from kd_modules.experiment import Recipe, build_brain, run_experiment
from kd_modules.hparams import run_main


def dataio_prepare(hparams: dict) -> dict[str, DynamicItemDataset]:
    """``train``/``valid``: the prepared segments (``sig``, ``spk_label``); ``test``: the trial
    list's whole utterances (``sig``). Crops and masks are the Brain's (``augmentation``), so a
    KD run from the teacher cache replays the cached views."""

    @takes("spk_label")
    @provides("spk_label")
    def label_item(spk_label: int) -> torch.Tensor:
        return torch.LongTensor([spk_label])

    segments = {
        split: DynamicItemDataset.from_json(
            hparams[f"{split}_annotation"],
            dynamic_items=[segment_pipeline(hparams["sample_rate"]), label_item],
            output_keys=["id", "sig", "spk_label"],
        )
        for split in ("train", "valid")
    }
    test = DynamicItemDataset.from_json(
        hparams["test_annotation"],
        dynamic_items=[audio_pipeline(hparams["sample_rate"])],
        output_keys=["id", "sig"],
    )
    return {**segments, "test": test}


def make_brain(hparams: dict, run_opts, teacher=None, cache=None, checkpoints: bool = True):
    """The run's SpeakerBrain; the cache, when given, replaces the live teacher."""
    return build_brain(SpeakerBrain, hparams, run_opts, teacher, cache, checkpoints)


def recipe() -> Recipe:
    """The recipe's data, Brain and results writer (verification, in verify.py)."""
    from verify import write_verification_results

    return Recipe(dataio_prepare, make_brain, write_verification_results)


def main(argv: list[str] | None = None) -> None:
    run_experiment(argv, recipe())


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
