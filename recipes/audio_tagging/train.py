#!/usr/bin/env python3
"""Train and/or evaluate one urban sound tagger: a teacher, a student alone, or a KD student.

    python train.py hparams/common.yaml hparams/student/crnn.yaml hparams/kd/iusp.yaml \
        --data_folder data/sonyc_ust --output_folder exp/... --n_outputs 37 \
        --teacher_folder exp/sonyc_ust/teacher/cnn10/none/seed1

The YAML files are composed (kd_modules.hparams); the Brain is the library's TaggingBrain and the
run's skeleton (lock, run record, training, evaluation) is kd_modules.experiment's. After
training, the checkpoint with the best validation coarse micro-AUPRC is evaluated on the release's
validate split (and the eval release when prepared); each writes ``predictions_<split>.csv`` in
the task's submission format and the metrics go to ``results.json`` (skip with ``--skip_test
True``; evaluate a finished run with SpeechBrain's ``--test_only`` flag).
"""

from __future__ import annotations

import csv
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.data_pipeline import provides, takes

from kd_modules.brains import TaggingBrain, TagLayout
from kd_modules.brains.tagging import clip_targets
from kd_modules.dataio import audio_pipeline, read_json
from kd_modules.evaluation import common_results, evaluate_best
from kd_modules.experiment import Recipe, build_brain, run_experiment
from kd_modules.hparams import run_main
from kd_modules.results import write_results

logger = logging.getLogger(__name__)
TEST_SETS = {"test": "validate", "eval": "eval"}  # manifest -> the release's split name


def splits(hparams: dict) -> tuple[str, ...]:
    """The run's manifests: train, valid, test (validate) and eval when it was prepared."""
    return ("train", "valid", "test", *(("eval",) if Path(hparams["eval_annotation"]).is_file()
                                         else ()))  # fmt: skip


def dataio_prepare(hparams: dict) -> dict[str, DynamicItemDataset]:
    """Datasets of every manifest: ``sig`` (the clip's first ``max_duration_s``) and ``targets``
    ``(K,)``, the fine then coarse columns of labels.json."""
    read_and_cut = audio_pipeline(hparams["sample_rate"], hparams["max_duration_s"])

    @takes("verified", "votes")
    @provides("targets")
    def targets_item(verified, votes) -> torch.Tensor:
        entry = {"verified": verified, "votes": votes}
        return torch.tensor(clip_targets(entry, hparams["train_targets"]), dtype=torch.float32)

    return {
        split: DynamicItemDataset.from_json(
            hparams[f"{split}_annotation"],
            dynamic_items=[read_and_cut, targets_item],
            output_keys=["id", "sig", "targets"],
        )
        for split in splits(hparams)
    }


def make_brain(hparams: dict, run_opts, teacher=None, cache=None, checkpoints: bool = True):
    """The run's TaggingBrain (with the prepared output layout); the cache replaces the teacher."""
    hparams["tag_layout"] = TagLayout.from_json(hparams["labels_file"])
    return build_brain(TaggingBrain, hparams, run_opts, teacher, cache, checkpoints)


def write_predictions(path: Path, layout: TagLayout, filenames: list[str], scores) -> None:
    """The submission CSV: ``audio_filename``, every fine column (X included), every coarse
    column, one row per clip; scores at full precision (``repr``), so they reproduce the metrics."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["audio_filename", *layout.fine, *layout.coarse])
        for name, row in zip(filenames, np.asarray(scores, dtype=np.float64)):
            writer.writerow([name, *map(repr, row.tolist())])
    tmp.replace(path)


def evaluate_split(brain, hparams: dict, datasets: dict, split: str) -> dict:
    """Metrics of the best checkpoint on one test set; writes its predictions CSV."""
    evaluate_best(brain, datasets[split], hparams, hparams["selection_key"])
    layout: TagLayout = hparams["tag_layout"]
    ids, scores = brain.test_predictions
    manifest = read_json(hparams[f"{split}_annotation"])
    path = Path(hparams["output_folder"]) / f"predictions_{TEST_SETS[split]}.csv"
    write_predictions(path, layout, [manifest[utt]["audio_filename"] for utt in ids], scores)
    metrics = {
        name: value
        for name, value in brain.test_stats.items()
        if name.startswith(("coarse_", "fine_"))
    }
    class_auprc = {
        "coarse": dict(zip(layout.coarse, brain.class_auprc["coarse"])),
        "fine": dict(zip(layout.coarse, brain.class_auprc["fine"])),  # one per coarse class
    }
    return {"metrics": metrics, "class_auprc": class_auprc, "predictions": path.name}


def write_run_results(brain, hparams: dict, datasets: dict, train_info: dict) -> None:
    """Evaluate the best-validation checkpoint on validate (and eval) and write results.json."""
    from speechbrain.utils.distributed import if_main_process

    started = time.time()
    tested = {split: evaluate_split(brain, hparams, datasets, split)
              for split in TEST_SETS if split in datasets}  # fmt: skip
    if not if_main_process():
        return
    test = tested["test"]
    key = hparams["selection_key"]
    results = {
        "task": "audio_tagging",
        "dataset": hparams["dataset"],
        "metrics": test["metrics"],
        **common_results(
            brain, hparams, train_info, datasets["test"], key, started, splits(hparams)
        ),
        "class_auprc": test["class_auprc"],
        "predictions": {TEST_SETS[split]: out["predictions"] for split, out in tested.items()},
        "test_sets": {TEST_SETS[split]: out["metrics"] for split, out in tested.items()},
        "train_targets": hparams["train_targets"],
        "skipped_test_clips": brain.skipped_clips,
    }
    write_results(Path(hparams["output_folder"]) / "results.json", results)
    logger.info(
        "validate: coarse micro-AUPRC %.4f, fine micro-AUPRC %.4f -> %s",
        results["metrics"]["coarse_micro_auprc"],
        results["metrics"]["fine_micro_auprc"],
        hparams["output_folder"],
    )


def main(argv: list[str] | None = None) -> None:
    run_experiment(argv, Recipe(dataio_prepare, make_brain, write_run_results, splits))


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
