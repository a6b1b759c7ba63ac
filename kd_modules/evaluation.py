"""Evaluation: the best-validation checkpoint on the test split, and the results.json fields
every recipe shares (checkpoint and its selection, cost, provenance, wall time).

A recipe's ``write_results`` (its :class:`~kd_modules.experiment.Recipe` hook) calls
:func:`evaluate_best`, adds its task, dataset and metrics to :func:`common_results` and writes
them with :func:`kd_modules.results.write_results` (the schema); stage 7 evaluates each run
folder once (``kd_modules.outputs``).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

from speechbrain.dataio.dataloader import make_dataloader
from speechbrain.utils.distributed import if_main_process

from kd_modules.brains.ddp import unwrap_module
from kd_modules.profiling import count_macs, count_params, cpu_latency_ms
from kd_modules.provenance import git_commit, manifest_files, versions
from kd_modules.run_folder import training_wall_time_s
from kd_modules.teacher import fingerprint_module


def evaluate_best(brain, dataset, hparams: dict, key: str) -> bool:
    """Test the best-validation checkpoint (largest ``key``) on ``dataset``; True on the main
    process, which alone writes results (the test split never selects a checkpoint)."""
    brain.evaluate(dataset, max_key=key, test_loader_kwargs=hparams["eval_dataloader_options"])
    return if_main_process()


def example_features(brain, dataset) -> tuple:
    """Features ``(1, T, F)`` and lengths of the first clip of ``dataset``, on the CPU, for the
    MACs and latency figures."""
    collate = brain.hparams.eval_dataloader_options["collate_fn"]
    batch = next(iter(make_dataloader(dataset, batch_size=1, collate_fn=collate)))
    feats, lens = brain.compute_features(batch.to(brain.device))
    return feats.cpu(), lens.cpu()


def common_results(
    brain, hparams: dict, train_info: dict, example_set, key: str, started: float, splits
) -> dict:
    """The results.json fields every recipe writes, for the checkpoint with the largest ``key``.

    ``example_set`` gives the clip the MACs and latency are measured on; ``started`` is when the
    evaluation began (``time.time()``), added to the training wall time; ``splits`` names the
    manifests. The recipe adds ``task``, ``dataset``, ``metrics`` and its own fields.
    """
    best = brain.checkpointer.find_checkpoint(max_key=key)
    model = copy.deepcopy(unwrap_module(brain.modules.model)).cpu()
    feats, lens = example_features(brain, example_set)
    history_file = Path(hparams["history_file"])
    history = json.loads(history_file.read_text()) if history_file.is_file() else []
    epoch_times = [h["time_s"] for h in history if h["stage"] == "train"]
    manifests = manifest_files(hparams, splits)
    return {
        **{name: hparams[name] for name in ("role", "method", "arch", "seed", "fold")},
        "params": count_params(model),
        "macs": count_macs(model, feats, lens),
        "latency_ms": cpu_latency_ms(model, feats, lens),
        "latency_input_s": feats.shape[1] * hparams["hop_length"] / 1000.0,
        "checkpoint": str(best.path),
        "selection": (
            f"best validation {key} {best.meta[key]:.4f} at epoch {best.meta['epoch']} of "
            f"{train_info.get('epochs') or hparams['number_of_epochs']} (the test split is never "
            "used for selection)"
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
        "wall_time_s": training_wall_time_s(hparams["output_folder"]) + (time.time() - started),
        "epoch_time_s": sum(epoch_times) / len(epoch_times) if epoch_times else None,
        "epochs": len(epoch_times),
    }
