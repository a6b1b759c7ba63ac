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

import contextlib
import copy
import json
import logging
import random
import sys
import time
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.data_pipeline import provides, takes
from speechbrain.utils.distributed import if_main_process

from kd_modules.brains import ClassificationBrain
from kd_modules.brains.distill import unwrap_module
from kd_modules.dataio import audio_pipeline
from kd_modules.experiment import (
    SessionClock,
    check_run_record,
    data_record,
    folder_lock,
    load_teacher_side,
    record_training,
    training_status,
    training_wall_time_s,
)
from kd_modules.hparams import load_composed, parse_recipe_arguments, run_main, write_composed
from kd_modules.profiling import count_macs, count_params, cpu_latency_ms
from kd_modules.results import git_commit, versions, write_results
from kd_modules.teacher import fingerprint_module

logger = logging.getLogger(__name__)


def dataio_prepare(hparams: dict) -> dict[str, DynamicItemDataset]:
    """Train/valid/test datasets from the stage-1 manifests: ``sig`` (cut/cropped) and ``label_id``.

    Clips are cut to ``max_duration_s`` from their start (deterministic, so the teacher cache is
    valid); with ``train_random_crop`` training clips are random ``crop_s`` windows instead.
    """
    read = audio_pipeline(hparams["sample_rate"])
    max_samples = int(hparams["max_duration_s"] * hparams["sample_rate"])
    crop_samples = int(hparams["crop_s"] * hparams["sample_rate"])

    def signal_item(random_crop: bool):
        @takes("wav")
        @provides("sig")
        def read_and_cut(wav: str) -> torch.Tensor:
            sig = read(wav)
            if random_crop and sig.numel() > crop_samples:
                start = random.randint(0, sig.numel() - crop_samples)
                return sig[start : start + crop_samples]
            return sig[:max_samples]

        return read_and_cut

    @takes("label_id")
    @provides("label_id")
    def label_item(label_id: int) -> torch.Tensor:
        return torch.LongTensor([label_id])

    datasets = {}
    for split in ("train", "valid", "test"):
        random_crop = split == "train" and hparams["train_random_crop"]
        datasets[split] = DynamicItemDataset.from_json(
            hparams[f"{split}_annotation"],
            dynamic_items=[signal_item(random_crop), label_item],
            output_keys=["id", "sig", "label_id"],
        )
    return datasets


def make_brain(hparams: dict, run_opts, teacher=None, cache=None, checkpoints: bool = True):
    """The run's ClassificationBrain; the cache, when given, replaces the live teacher."""
    return ClassificationBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"] if checkpoints else None,
        teacher=None if cache is not None else teacher,
        kd_losses=hparams["kd_losses"],
        kd_weights=hparams["kd_weights"],
        student_taps=hparams["student_taps"],
        teacher_cache=cache,
        history_file=hparams["history_file"] if checkpoints else None,
    )


def example_features(brain: ClassificationBrain, dataset: DynamicItemDataset) -> tuple:
    """Features of the first test clip, on the CPU, for MACs and latency figures."""
    loader = sb.dataio.dataloader.make_dataloader(
        dataset, batch_size=1, collate_fn=brain.hparams.eval_dataloader_options["collate_fn"]
    )
    batch = next(iter(loader))
    feats, lens = brain.compute_features(batch.to(brain.device))
    return feats.cpu(), lens.cpu()


def manifest_files(hparams: dict) -> dict[str, str]:
    """Split name -> manifest file of the run."""
    return {split: hparams[f"{split}_annotation"] for split in ("train", "valid", "test")}


def write_run_results(brain, hparams: dict, datasets: dict, train_info: dict) -> None:
    """Evaluate the best-validation checkpoint on the test split and write results.json."""
    manifests = manifest_files(hparams)
    start = time.time()
    brain.evaluate(
        datasets["test"], max_key="accuracy", test_loader_kwargs=hparams["eval_dataloader_options"]
    )
    if not if_main_process():
        return
    best = brain.checkpointer.find_checkpoint(max_key="accuracy")
    model = copy.deepcopy(unwrap_module(brain.modules.model)).cpu()
    feats, lens = example_features(brain, datasets["test"])
    history_file = Path(hparams["history_file"])
    history = json.loads(history_file.read_text()) if history_file.is_file() else []
    epoch_times = [h["time_s"] for h in history if h["stage"] == "train"]
    results = {
        "task": "sound_classification",
        "dataset": hparams["dataset"],
        "role": hparams["role"],
        "method": hparams["method"],
        "arch": hparams["arch"],
        "seed": hparams["seed"],
        "fold": hparams["fold"],
        "metrics": {"accuracy": brain.test_stats["accuracy"]},
        "params": count_params(model),
        "macs": count_macs(model, feats, lens),
        "latency_ms": cpu_latency_ms(model, feats, lens),
        "latency_input_s": feats.shape[1] * hparams["hop_length"] / 1000.0,
        "checkpoint": str(best.path),
        "selection": (
            f"best validation accuracy {best.meta['accuracy']:.4f} at epoch {best.meta['epoch']} "
            f"of {hparams['number_of_epochs']} (the test split is never used for selection)"
        ),
        "teacher_fingerprint": train_info["teacher_fingerprint"],
        "model_fingerprint": fingerprint_module(model),
        "data": train_info.get("data"),
        "data_files": {
            "manifests": {split: str(Path(path).resolve()) for split, path in manifests.items()},
            "prepare_settings": str(Path(hparams["prepare_settings"]).resolve()),
        },
        "versions": versions(),
        "git_commit": git_commit(Path(__file__).parent),
        "wall_time_s": training_wall_time_s(hparams["output_folder"]) + (time.time() - start),
        "epoch_time_s": sum(epoch_times) / len(epoch_times) if epoch_times else None,
        "epochs": len(epoch_times),
        "skipped_test_clips": brain.skipped_clips,
    }
    write_results(Path(hparams["output_folder"]) / "results.json", results)
    logger.info(
        "Test accuracy %.4f -> %s", results["metrics"]["accuracy"], hparams["output_folder"]
    )


def run_record(hparams: dict, teacher) -> dict:
    """What this run folder trains on: the manifests, stage 1's settings and the teacher."""
    return {
        "data": data_record(manifest_files(hparams), hparams["prepare_settings"]),
        "teacher_fingerprint": teacher.fingerprint if teacher is not None else None,
    }


def train(brain, hparams: dict, datasets: dict, teacher, cache, record: dict) -> None:
    """Fit (or resume) the run; keep train_info.json honest about time, teacher and progress."""
    output = Path(hparams["output_folder"])
    epochs = hparams["number_of_epochs"]
    status = training_status(output)
    info = {
        "teacher_fingerprint": record["teacher_fingerprint"],
        "teacher_checkpoint": getattr(teacher, "checkpoint", None),
        "teacher_cache": str(cache.folder) if cache else None,
        "data": record["data"],
        "epochs": epochs,
    }
    finished_before = status["finished"] and status["epochs"] == epochs
    with SessionClock(output) if if_main_process() else contextlib.nullcontext():
        if not finished_before and if_main_process():  # a KD stage must not take it as done
            record_training(output, {**status, **info, "finished": False})
        brain.fit(
            brain.hparams.epoch_counter,
            datasets["train"],
            datasets["valid"],
            train_loader_kwargs=hparams["train_dataloader_options"],
            valid_loader_kwargs=hparams["eval_dataloader_options"],
        )
    if if_main_process() and (brain.train_epochs_run or not finished_before):
        done = brain.hparams.epoch_counter.current
        record_training(output, {**info, "epochs_done": done, "finished": done >= epochs})


def main(argv: list[str] | None = None) -> None:
    files, run_opts, overrides = parse_recipe_arguments(argv)
    hparams = load_composed(files, overrides)
    sb.utils.distributed.ddp_init_group(run_opts)
    output = Path(hparams["output_folder"])
    lock = folder_lock(output) if if_main_process() else contextlib.nullcontext()
    with lock:
        composed = output / "composed.yaml"
        sb.utils.distributed.run_on_main(write_composed, args=[files, composed])
        sb.create_experiment_directory(
            hparams["output_folder"], hyperparams_to_save=str(composed), overrides=overrides
        )
        datasets = dataio_prepare(hparams)
        teacher, cache = (None, None) if run_opts["test_only"] else load_teacher_side(hparams)
        record = run_record(hparams, teacher)
        sb.utils.distributed.run_on_main(check_run_record, args=[output, record])
        brain = make_brain(hparams, run_opts, teacher, cache)
        if not run_opts["test_only"]:
            train(brain, hparams, datasets, teacher, cache, record)
        if not hparams["skip_test"]:
            write_run_results(brain, hparams, datasets, training_status(output))


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
