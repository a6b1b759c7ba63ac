"""Stage 6, data-free KD, for any recipe: synthesise a pool from the teacher, distil on it.

A recipe's ``synthesize.py`` gives :class:`PoolRun` its pool plan (``plan_of(hparams)``: the
classes of :func:`~kd_modules.synthesis.pool_plan` or the tag sets of
:func:`~kd_modules.synthesis.tag_set_plan`) and its results writer, and passes the run's hooks to
:func:`~kd_modules.experiment.run_experiment` (``teacher_side=live_teacher``,
``prepare_run=run.prepare``). The pool is built once per synthesiser, teacher and seed and
shared by the methods that use it; a killed synthesis resumes at its first unwritten batch. Under
torchrun each rank synthesises its share of the pool. The real training clips are never read:
validation and test stay real.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.data_pipeline import provides, takes
from speechbrain.utils.distributed import if_main_process, run_on_main

from kd_modules.dataio import read_json, write_json_atomic
from kd_modules.outputs import file_sha256
from kd_modules.results import write_results
from kd_modules.run_folder import SessionClock, check_run_record, folder_lock, training_wall_time_s
from kd_modules.synthesis import PoolBatch, SyntheticPool, embedding_diversity, synthesize_pool
from kd_modules.teacher import load_teacher


def rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def barrier() -> None:
    if rank_and_world()[1] > 1:
        torch.distributed.barrier()


def plan_record(plan: list[PoolBatch]) -> list:
    """The plan as the pool's run record keeps it (JSON: tag sets as lists)."""
    return [[b.index, [_json(t) for t in b.targets], b.frames, b.seed] for b in plan]


def _json(target: int | tuple[int, ...]) -> int | list[int]:
    return list(target) if isinstance(target, tuple) else target


DIVERSITY = "diversity.json"


def pool_diversity(model: torch.nn.Module, pool: SyntheticPool, key: str = "embedding"):
    """:func:`~kd_modules.synthesis.embedding_diversity` of the teacher's ``key`` outputs over
    the pool's samples, grouped by class (or by tag, for multi-hot tag sets); None when the
    teacher has no ``key`` output or no class has two samples. Samples of one length are
    batched together (a batch of the plan shares its frame count)."""
    manifest = pool.manifest()
    by_frames: dict[int, list[str]] = {}
    for sample_id, entry in manifest.items():
        by_frames.setdefault(entry["frames"], []).append(sample_id)
    device = next(model.parameters()).device
    embeddings, labels = [], []
    with torch.no_grad():
        for ids in by_frames.values():
            x = torch.stack([pool.load(sample_id) for sample_id in ids]).to(device)
            outputs = model(x, None)
            if key not in outputs:
                return None
            embeddings.append(outputs[key].reshape(len(ids), -1).float().cpu())
            entries = [manifest[sample_id] for sample_id in ids]
            labels += [entry.get("targets", entry.get("label_id")) for entry in entries]
    try:
        return embedding_diversity(torch.cat(embeddings), torch.tensor(labels))
    except ValueError:
        return None


def build_pool(
    hparams: dict,
    run_opts: dict,
    teacher,
    plan: list[PoolBatch],
    on_complete: Callable[[Path], None] | None = None,
) -> SyntheticPool:
    """Synthesise (or finish, or reuse) the run's pool of ``plan``; every rank returns once it
    is complete. ``on_complete(folder)`` runs once on the main process after the merge (the
    sound recipe keeps real examples beside the pool for its figure)."""
    folder = Path(hparams["pool_folder"])
    pool = SyntheticPool(folder)
    synthesizer = hparams["synthesizer"](teacher=teacher.model, device=run_opts["device"])
    record = {
        "teacher_fingerprint": teacher.fingerprint,
        "synthesizer": synthesizer.settings(),
        "plan": plan_record(plan),
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
                diversity = pool_diversity(teacher.model, pool)
                write_json_atomic(folder / DIVERSITY, {"embedding_diversity": diversity})
                if on_complete is not None:
                    on_complete(folder)
        barrier()
    return pool


def use_pool_schedule(hparams: dict) -> None:
    """Train on the pool with ``pool_lr_annealing`` instead of common.yaml's ``lr_annealing``.

    common.yaml's NewBob halves the rate whenever the *real* validation loss fails to improve;
    on synthetic training batches it often does not, even while the real metric rises, and
    NewBob then decays the rate to nothing (the checkpoint is still chosen on real validation
    data). The synthesis YAMLs set a fixed cosine over the epochs (ours).
    """
    hparams["lr_annealing"] = hparams["pool_lr_annealing"]
    hparams["checkpointer"].add_recoverable("lr_annealing", hparams["pool_lr_annealing"])


def pool_summary(pool: SyntheticPool) -> dict:
    """What the results table reports for a data-free run: time, size and diversity (within
    class or tag, :func:`pool_diversity`, when measured) of its pool."""
    record = read_json(pool.folder / "run_record.json")
    diversity = pool.folder / DIVERSITY
    return {
        "synthesizer": record["synthesizer"]["name"],
        "pool": str(pool.folder.resolve()),
        "samples": len(pool.manifest()),
        "wall_time_s": training_wall_time_s(pool.folder),
        "manifest_sha256": file_sha256(pool.manifest_file),
        **(read_json(diversity) if diversity.is_file() else {}),
    }


def pool_dataset(pool: SyntheticPool) -> DynamicItemDataset:
    """The pool as a dataset of ``feats`` (T, F) and its synthesis targets: ``label_id`` (a
    class, LongTensor (1,)) or, for a tagger's pool, ``targets`` (multi-hot, float (C,))."""
    manifest = pool.manifest()
    multi_label = any("targets" in entry for entry in manifest.values())
    key = "targets" if multi_label else "label_id"
    data = {
        sample_id: {"path": str(pool.folder / entry["path"]), "target": entry[key]}
        for sample_id, entry in manifest.items()
    }

    @takes("path")
    @provides("feats")
    def load(path: str) -> torch.Tensor:
        return torch.load(path, map_location="cpu")

    @takes("target")  # the manifest's value, as a tensor under the task's name
    @provides(key)
    def target(value) -> torch.Tensor:
        if multi_label:
            return torch.tensor(value, dtype=torch.float32)
        return torch.LongTensor([value])

    return DynamicItemDataset(data, dynamic_items=[load, target], output_keys=["id", "feats", key])


class PoolRun:
    """The data-free run's hooks in the library's skeleton (``kd_modules.experiment``): the
    teacher's synthetic pool replaces the real training clips; validation and test stay real.

    ``plan_of(hparams)``: the pool's batches; ``write_run_results(brain, hparams, datasets,
    train_info)``: the recipe's results.json writer; ``on_complete(hparams, valid_set,
    folder)``: run once after the pool is merged (:func:`build_pool`).
    """

    def __init__(
        self,
        plan_of: Callable[[dict], list[PoolBatch]],
        write_run_results: Callable,
        on_complete: Callable[[dict, DynamicItemDataset, Path], None] | None = None,
    ) -> None:
        self.plan_of, self.write_run_results = plan_of, write_run_results
        self.on_complete = on_complete
        self.pool: SyntheticPool | None = None

    def prepare(self, hparams: dict, run_opts: dict, datasets: dict, teacher) -> dict:
        """Synthesise (or finish, or reuse) the pool, or open it to evaluate (``--test_only``
        loads no teacher); train on it with its loader and schedule. Returns the run record's
        entry for the pool: its manifest's hash."""
        if teacher is not None:
            done = self.on_complete and partial(self.on_complete, hparams, datasets["valid"])
            self.pool = build_pool(hparams, run_opts, teacher, self.plan_of(hparams), done)
        else:
            self.pool = SyntheticPool(hparams["pool_folder"])
        datasets["train"] = pool_dataset(self.pool)
        hparams["train_dataloader_options"] = hparams["pool_dataloader_options"]
        use_pool_schedule(hparams)
        return {"pool_manifest": file_sha256(self.pool.manifest_file)}

    def write_results(self, brain, hparams: dict, datasets: dict, train_info: dict) -> None:
        """The recipe's results.json, plus the pool's synthesis time and size."""
        self.write_run_results(brain, hparams, datasets, train_info)
        if if_main_process():
            path = Path(hparams["output_folder"]) / "results.json"
            results = read_json(path)
            results["synthesis"] = pool_summary(self.pool)
            write_results(path, results)


def live_teacher(hparams: dict) -> tuple:
    """The frozen teacher and no cache: the pool is synthesised from the live model."""
    return load_teacher(hparams), None
