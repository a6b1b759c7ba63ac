#!/usr/bin/env python3
"""Train one speaker-embedding model: a teacher, a student alone, or a KD student (IML-KD...).

    python train.py hparams/common.yaml hparams/student/ecapa_c256.yaml hparams/kd/imlkd.yaml \
        --data_folder data/voxceleb1 --output_folder exp/... --n_speakers 1211 \
        --teacher_folder exp/voxceleb1/teacher/ecapa_c1024/none/seed1

The YAML files are composed (kd_modules.hparams); the Brain is the library's SpeakerBrain (AAM
softmax on fixed-length crops of the training segments; speaker-ID accuracy on the validation
segments selects the checkpoint) and the run's skeleton is kd_modules.experiment's. After
training, the best checkpoint is verified on the trial list (skip with ``--skip_test True``;
verify a finished run, stage 7, with SpeechBrain's ``--test_only`` flag): every test utterance
is embedded whole, each trial scored by cosine and normalised with S-norm and AS-norm against a
cohort of training speakers (the mean embedding of ``cohort_segments`` segments of each of
``cohort_size`` speakers), all by kd_modules.verification. Each score list is written one trial
a line (``label score enrol test``) to ``scores[_snorm|_asnorm].txt`` in the run folder, which
results.json names under ``scores``; the metrics are EER and minDCF (p_target 0.01,
C_miss = C_fa = 1, normalised) as ``eer``/``min_dcf`` and ``snorm_*``/``asnorm_*``.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.data_pipeline import provides, takes
from speechbrain.utils.distributed import if_main_process

from kd_modules.brains import SpeakerBrain, UnlabelledSpeakerBrain
from kd_modules.data_info import DATA_INFO, read_data_info
from kd_modules.dataio import audio_pipeline, segment_pipeline
from kd_modules.evaluation import common_results
from kd_modules.experiment import Recipe, build_brain, run_experiment
from kd_modules.hparams import run_main
from kd_modules.results import write_results
from kd_modules.verification import cohort_embeddings, embed, read_trials, score_and_write

logger = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test")


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


def labelled(data_folder: str) -> bool:
    """False when stage 1 prepared the data without labels (data_info.json ``labelled: false``)."""
    info = Path(data_folder) / DATA_INFO
    return not info.is_file() or read_data_info(info).get("labelled", True)


def make_brain(hparams: dict, run_opts, teacher=None, cache=None, checkpoints: bool = True):
    """The run's SpeakerBrain (UnlabelledSpeakerBrain, KD terms only, when stage 1 prepared the
    data without labels: ``--dataset folder``); the cache, when given, replaces the live teacher."""
    if labelled(hparams["data_folder"]):
        return build_brain(SpeakerBrain, hparams, run_opts, teacher, cache, checkpoints)
    brain = build_brain(UnlabelledSpeakerBrain, hparams, run_opts, teacher, cache, checkpoints)
    brain.validation_teacher = teacher  # validation's KD loss: the cache has training views only
    return brain


def write_verification_results(brain, hparams: dict, datasets: dict, train_info: dict) -> None:
    """Verify the best-validation checkpoint on the trial list; write scores and results.json."""
    started = time.time()
    if not if_main_process():
        return
    key = brain.selection_key()  # speaker-ID accuracy; the last epoch without labels
    brain.on_evaluate_start(max_key=key)
    brain.on_stage_start(sb.Stage.TEST, None)
    output = Path(hparams["output_folder"])
    test = embed(brain, datasets["test"], hparams["embedding_batch_size"], "test embeddings")
    all_trials = read_trials(hparams["trials_file"])
    trials = [t for t in all_trials if t[1] in test and t[2] in test]
    if len(trials) < len(all_trials):
        logger.warning("%d trials skipped: unreadable audio", len(all_trials) - len(trials))
    cohort = cohort_embeddings(
        brain,
        datasets["train"],
        hparams["cohort_segments"],
        hparams["cohort_size"],
        hparams["embedding_batch_size"],
    )
    metrics, files = score_and_write(
        test, trials, cohort, output, hparams["p_target"], hparams["asnorm_top_k"]
    )
    results = {
        "task": "speaker_verification",
        "dataset": hparams["dataset"],
        "metrics": metrics,
        **common_results(brain, hparams, train_info, datasets["test"], key, started, SPLITS),
        "scores": files,
        "trials": len(trials),
        "skipped_trials": len(all_trials) - len(trials),
        "cohort_speakers": int(cohort.shape[0]),
    }
    write_results(output / "results.json", results)
    logger.info("EER %.2f%%, minDCF %.4f -> %s", 100 * metrics["eer"], metrics["min_dcf"], output)


def main(argv: list[str] | None = None) -> None:
    run_experiment(argv, Recipe(dataio_prepare, make_brain, write_verification_results))


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
