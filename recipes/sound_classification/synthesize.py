#!/usr/bin/env python3
"""Stage 6, data-free KD: synthesise a pool of log-Mel spectrograms from the teacher, then distil
a student on the pool alone (validated and tested on real clips).

    python synthesize.py hparams/common.yaml hparams/student/xvector_small.yaml \
        hparams/synthesis/frami.yaml hparams/kd/frami.yaml --data_folder data/fsdd/fold1 \
        --n_classes 10 --teacher_folder exp/fsdd/fold1/teacher/xvector_large/none/seed1 \
        --pool_folder exp/fsdd/fold1/pool/xvector_large_seed1/frami/seed1 \
        --output_folder exp/fsdd/fold1/student/xvector_small/frami/seed1

The pool (``kd_modules.synthesis.pool``) is built once per synthesiser, teacher and seed and
shared by the methods that use it (FRAMI with and without hidden-state reuse); a killed synthesis
resumes at its first unwritten batch, exactly (the synthesiser's state is saved with each batch).
Under torchrun each rank synthesises its share of the pool and the KD runs as DDP. The real
training clips are never read here: only the teacher saw them. ``--test_only`` evaluates a
finished run (stage 7), ``--skip_test True`` trains only.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.data_pipeline import provides, takes
from speechbrain.utils.distributed import if_main_process, run_on_main

from kd_modules.brains.datafree import DataFreeBrain
from kd_modules.dataio import read_json
from kd_modules.experiment import Recipe, build_brain, run_experiment
from kd_modules.hparams import run_main
from kd_modules.outputs import file_sha256
from kd_modules.results import write_results
from kd_modules.run_folder import SessionClock, check_run_record, folder_lock, training_wall_time_s
from kd_modules.synthesis import SyntheticPool, pool_plan, synthesize_pool
from kd_modules.synthesis.figures import REAL_EXAMPLES
from kd_modules.teacher import load_teacher
from recipes.sound_classification.train import SPLITS, dataio_prepare, write_run_results

logger = logging.getLogger(__name__)


def plan_of(hparams: dict) -> list:
    """The pool's batches, from its keys."""
    return pool_plan(
        hparams["n_classes"],
        hparams["samples_per_class"],
        hparams["synthesis_batch_size"],
        hparams["min_frames"],
        hparams["max_frames"],
        hparams["synthesis_seed"],
    )


def rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def barrier() -> None:
    if rank_and_world()[1] > 1:
        torch.distributed.barrier()


def save_real_examples(hparams: dict, dataset: DynamicItemDataset, path: Path) -> None:
    """Features (T, F) of the first validation clip of each class, beside the pool."""
    examples = {}
    for index in range(len(dataset)):
        item = dataset[index]
        label = int(item["label_id"])
        if label not in examples and item["sig"].numel():
            wav = item["sig"].unsqueeze(0)
            feats = hparams["front_end"](wav, torch.ones(1))
            examples[label] = feats[0]
    torch.save(examples, path)


def build_pool(hparams: dict, run_opts: dict, teacher, valid_set) -> SyntheticPool:
    """Synthesise (or finish, or reuse) the run's pool; every rank returns once it is complete."""
    folder = Path(hparams["pool_folder"])
    pool, plan = SyntheticPool(folder), plan_of(hparams)
    synthesizer = hparams["synthesizer"](teacher=teacher.model, device=run_opts["device"])
    record = {
        "teacher_fingerprint": teacher.fingerprint,
        "synthesizer": synthesizer.settings(),
        "plan": [[b.index, list(b.targets), b.frames, b.seed] for b in plan],
    }
    rank, world = rank_and_world()
    main = if_main_process()
    with folder_lock(folder, "synthetic pool") if main else contextlib.nullcontext():
        run_on_main(check_run_record, args=[folder, record, pool.started(), "pool"])
        if not pool.complete(plan):
            with SessionClock(folder) if main else contextlib.nullcontext():
                synthesize_pool(synthesizer, pool, plan, rank, world, progress=main)
                barrier()
            if main:
                pool.merge(plan)
                save_real_examples(hparams, valid_set, folder / REAL_EXAMPLES)
        barrier()
    return pool


def use_pool_schedule(hparams: dict) -> None:
    """Train on the pool with ``pool_lr_annealing`` instead of common.yaml's ``lr_annealing``.

    common.yaml's NewBob halves the rate whenever the *real* validation loss fails to improve;
    on synthetic training batches it often does not, even while the real accuracy rises, and
    NewBob then decays the rate to nothing (the checkpoint is still chosen by real validation
    accuracy). The synthesis YAMLs set a fixed cosine over the epochs (ours).
    """
    hparams["lr_annealing"] = hparams["pool_lr_annealing"]
    hparams["checkpointer"].add_recoverable("lr_annealing", hparams["pool_lr_annealing"])


def pool_summary(pool: SyntheticPool) -> dict:
    """What the results table reports for a data-free run: time and size of its pool."""
    record = read_json(pool.folder / "run_record.json")
    return {
        "synthesizer": record["synthesizer"]["name"],
        "pool": str(pool.folder.resolve()),
        "samples": len(pool.manifest()),
        "wall_time_s": training_wall_time_s(pool.folder),
        "manifest_sha256": file_sha256(pool.manifest_file),
    }


def pool_dataset(pool: SyntheticPool) -> DynamicItemDataset:
    """The pool as a dataset of ``feats`` (T, F) and ``label_id`` (the synthesis target)."""
    data = {
        sample_id: {"path": str(pool.folder / entry["path"]), "label_id": entry["label_id"]}
        for sample_id, entry in pool.manifest().items()
    }

    @takes("path")
    @provides("feats")
    def load(path: str) -> torch.Tensor:
        return torch.load(path, map_location="cpu")

    @takes("label_id")
    @provides("label_id")
    def label(label_id: int) -> torch.Tensor:
        return torch.LongTensor([label_id])

    return DynamicItemDataset(
        data, dynamic_items=[load, label], output_keys=["id", "feats", "label_id"]
    )


class PoolRun:
    """The data-free run's hooks in the library's skeleton (``kd_modules.experiment``): the
    teacher's synthetic pool replaces the real training clips; validation and test stay real."""

    def __init__(self) -> None:
        self.pool: SyntheticPool | None = None

    def prepare(self, hparams: dict, run_opts: dict, datasets: dict, teacher) -> dict:
        """Synthesise (or finish, or reuse) the pool, or open it to evaluate (``--test_only``
        loads no teacher); train on it with its loader and schedule. Returns the run record's
        entry for the pool: its manifest's hash."""
        if teacher is not None:
            self.pool = build_pool(hparams, run_opts, teacher, datasets["valid"])
        else:
            self.pool = SyntheticPool(hparams["pool_folder"])
        datasets["train"] = pool_dataset(self.pool)
        hparams["train_dataloader_options"] = hparams["pool_dataloader_options"]
        use_pool_schedule(hparams)
        return {"pool_manifest": file_sha256(self.pool.manifest_file)}

    def write_results(self, brain, hparams: dict, datasets: dict, train_info: dict) -> None:
        """The recipe's results.json, plus the pool's synthesis time and size."""
        write_run_results(brain, hparams, datasets, train_info)
        if if_main_process():
            path = Path(hparams["output_folder"]) / "results.json"
            results = read_json(path)
            results["synthesis"] = pool_summary(self.pool)
            write_results(path, results)


def live_teacher(hparams: dict) -> tuple:
    """The frozen teacher and no cache: the pool is synthesised from the live model."""
    return load_teacher(hparams), None


def make_brain(hparams: dict, run_opts: dict, teacher=None, cache=None) -> DataFreeBrain:
    """The data-free student's Brain (the teacher live, never a cache)."""
    return build_brain(DataFreeBrain, hparams, run_opts, teacher)


def main(argv: list[str] | None = None) -> None:
    run = PoolRun()
    recipe = Recipe(
        dataio_prepare,
        make_brain,
        run.write_results,
        splits=lambda hparams: SPLITS,
        teacher_side=live_teacher,
        prepare_run=run.prepare,
    )
    run_experiment(argv, recipe)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
