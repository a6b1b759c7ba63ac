"""What every recipe's ``train.py`` needs around its Brain, written once for all recipes.

- :func:`run_experiment`: a recipe's ``train.py`` main (lock, run record, train, evaluate), given
  a :class:`Recipe` (its data pipeline, Brain and results writer; ``kd_modules.evaluation``
  gives every results.json its checkpoint, cost and provenance fields).

The run folder's lock, record and clock are ``kd_modules.run_folder``'s; what a run is trained
on (data hashes, git commit, versions) is ``kd_modules.provenance``'s; the frozen teacher of a KD
run and its cache are ``kd_modules.teacher``'s (:func:`~kd_modules.teacher.load_teacher_side`).

The recipe's hparams follow one contract: ``method``, ``teacher_folder``, ``teacher_taps``,
``teacher_selection`` (``{max_key: ...}`` or ``{min_key: ...}``), ``use_teacher_cache``,
``allow_unfinished_teacher``, ``exp_root``, ``feature_settings``, ``train_annotation`` and
``random_input_settings`` (name -> value of every setting that randomises the training inputs).
Nothing here knows a dataset.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kd_modules.cache import TeacherCache
from kd_modules.provenance import run_record
from kd_modules.run_folder import (
    LOCK_NAME,
    SessionClock,
    check_run_record,
    folder_lock,
    record_training,
    training_status,
)
from kd_modules.teacher import (
    load_teacher,
    load_teacher_side,
    teacher_cache_folder,
    teacher_targets,
)

logger = logging.getLogger(__name__)


# ----- the train.py skeleton every recipe shares -------------------------------------------------


@dataclass
class Recipe:
    """What a recipe's ``train.py`` adds to :func:`run_experiment`: its data, Brain and results.

    ``dataio_prepare(hparams) -> {split: dataset}``; ``make_brain(hparams, run_opts, teacher,
    cache) -> DistillBrain``; ``write_results(brain, hparams, datasets, train_info)`` evaluates
    and writes results.json; ``splits(hparams)`` names the manifests the run is trained and
    tested on (recorded in the run folder).
    """

    dataio_prepare: Callable[[dict], dict]
    make_brain: Callable[..., Any]
    write_results: Callable[[Any, dict, dict, dict], None]
    splits: Callable[[dict], tuple[str, ...]] = lambda hparams: ("train", "valid", "test")


def train_run(brain, hparams: dict, datasets: dict, teacher, cache, record: dict) -> None:
    """Fit (or resume) the run; keep train_info.json honest about time, teacher and progress."""
    from speechbrain.utils.distributed import if_main_process

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


def build_brain(brain_class, hparams: dict, run_opts, teacher=None, cache=None, checkpoints=True):
    """The run's Brain (a DistillBrain subclass) from the composed hparams' standard keys; the
    cache, when given, replaces the live teacher; ``checkpoints=False`` writes nothing."""
    return brain_class(
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
        augmentation=hparams.get("augmentation"),
        view_replay=hparams.get("view_replay"),
    )


@contextlib.contextmanager
def experiment_folder(argv: list[str] | None) -> Iterator[tuple[dict, dict, Path]]:
    """Compose a run's YAML from ``argv``, join torchrun's process group, lock the run folder
    (main process) and write its composed YAML; yields ``(hparams, run_opts, output folder)``."""
    import speechbrain as sb
    from speechbrain.utils.distributed import if_main_process, run_on_main

    from kd_modules.hparams import load_composed, parse_recipe_arguments, write_composed

    files, run_opts, overrides = parse_recipe_arguments(argv)
    hparams = load_composed(files, overrides)
    sb.utils.distributed.ddp_init_group(run_opts)
    output = Path(hparams["output_folder"])
    with folder_lock(output) if if_main_process() else contextlib.nullcontext():
        composed = output / "composed.yaml"
        run_on_main(write_composed, args=[files, composed])
        sb.create_experiment_directory(
            hparams["output_folder"], hyperparams_to_save=str(composed), overrides=overrides
        )
        yield hparams, run_opts, output


def run_experiment(argv: list[str] | None, recipe: Recipe) -> None:
    """A recipe's ``train.py`` main: compose the YAML, lock the run folder, check its record,
    train (unless ``--test_only``) and evaluate (unless ``skip_test``)."""
    from speechbrain.utils.distributed import run_on_main

    with experiment_folder(argv) as (hparams, run_opts, output):
        datasets = recipe.dataio_prepare(hparams)
        teacher, cache = (None, None) if run_opts["test_only"] else load_teacher_side(hparams)
        if cache is not None:  # the training clips come with their cached views
            hparams["view_replay"].attach(datasets["train"], cache)
        record = run_record(hparams, teacher, recipe.splits(hparams))
        run_on_main(check_run_record, args=[output, record])
        brain = recipe.make_brain(hparams, run_opts, teacher, cache)
        if not run_opts["test_only"]:
            train_run(brain, hparams, datasets, teacher, cache, record)
        if not hparams["skip_test"]:
            recipe.write_results(brain, hparams, datasets, training_status(output))
    end_distributed(brain)


def end_distributed(brain) -> None:
    """Under torchrun: release the DDP-wrapped modules, then the process group, in step.

    Left to interpreter shutdown, gloo's worker threads can be destroyed with work still queued
    and abort a rank ("terminate called without an active exception") after a finished run.
    """
    import gc

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    brain.modules = None  # drops the DDP wrappers (and their reducers' pending work)
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


# ----- stage 3: the teacher cache ----------------------------------------------------------------


CACHE_KEYS = ("cache_", "check_cache:")  # how the cache stage's top-level YAML lines begin


def cache_stage_help(argv: list[str], common_yaml: str | Path | None = None) -> str:
    """``cache_teacher.py --help``: the usage and the YAML lines (value and comment) of every cache
    setting of the composition given before ``--help`` (else of ``common_yaml``), so the shard
    size and interval are found where the stage is run, not only in the YAML."""
    from kd_modules.hparams import compose_yaml

    files = [arg for arg in argv if arg.endswith((".yaml", ".yml"))]
    files = files or ([common_yaml] if common_yaml is not None else [])
    script = Path(sys.argv[0]).name
    lines = [
        f"usage: {script} common.yaml ARCH.yaml KD.yaml [--key value ...]",
        "Stage 3, the teacher cache: takes the arguments of a KD run of train.py. Override any",
        "YAML key as --key value (e.g. --cache_shard_seconds 30); SpeechBrain's run options",
        "(--device, ...) work as in train.py.",
    ]
    if not files:
        return "\n".join([*lines, "Give the composition before --help to list its cache keys."])
    keys = [line for line in compose_yaml(files).splitlines() if line.startswith(CACHE_KEYS)]
    where = ", ".join(str(file) for file in files)
    return "\n".join([*lines, f"Cache settings (from {where}):", *(f"  {k}" for k in keys)])


def run_cache_stage(
    argv: list[str] | None,
    dataio_prepare: Callable[[dict], dict],
    common_yaml: str | Path | None = None,
) -> Path:
    """A recipe's stage-3 main: run the frozen teacher once over ``cache_views`` seeded views of
    every training clip and store its outputs and tapped features where KD runs with
    ``use_teacher_cache`` look for them; under torchrun each rank computes its share and writes
    its own shards. With ``check_cache`` N > 0 it then re-runs the live teacher on N random
    cached clips and fails loudly on any difference. Takes the arguments of a KD run of
    train.py (hparams ``view_replay``, ``cache_batch_size``, ``cache_shard_size``,
    ``cache_shard_seconds``, ``cache_dtype``, ``cache_topk``, ``check_cache``); ``--help`` lists
    them (:func:`cache_stage_help`: those of ``common_yaml`` when no composition is given)."""
    import functools
    import random

    import speechbrain as sb
    import torch.distributed as dist
    from speechbrain.utils.distributed import if_main_process

    from kd_modules.cache import build_teacher_cache
    from kd_modules.hparams import load_composed, parse_recipe_arguments
    from kd_modules.progress import progress_bar
    from kd_modules.replay import verify_cache

    argv = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(argv):
        print(cache_stage_help(argv, common_yaml))
        raise SystemExit(0)
    files, run_opts, overrides = parse_recipe_arguments(argv)
    hparams = load_composed(files, overrides)
    if hparams["method"] == "none":
        raise SystemExit("the cache stage needs a KD composition (kd/*.yaml with a teacher)")
    sb.utils.distributed.ddp_init_group(run_opts)
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = run_opts["device"]
    teacher = load_teacher(hparams).to(device)
    replay = hparams["view_replay"]
    replay.front_end.to(device)
    folder = teacher_cache_folder(hparams, teacher)
    dataset = dataio_prepare(hparams)["train"]
    position = {utt: i for i, utt in enumerate(dataset.data_ids)}
    order = sorted(dataset.data_ids, key=lambda utt: dataset.data[utt]["duration"])

    def signal(utt: str):
        return dataset[position[utt]]["sig"]

    settings = {
        "feature_settings": hparams["feature_settings"],
        "teacher_taps": hparams["teacher_taps"],
        "teacher_folder": str(hparams["teacher_folder"]),
        "teacher_checkpoint": teacher.checkpoint,
        "fingerprint": teacher.fingerprint,
        "augmentation": replay.settings(),
    }
    views = lambda batch: replay.features(batch, device)  # noqa: E731
    with folder_lock(folder, what="teacher cache folder", name=f"{LOCK_NAME}-r{rank}"):
        build_teacher_cache(  # this rank's share, shortest first: same-length views batch
            teacher, order[rank::world], signal, views, replay.make_view, folder, settings,
            n_views=replay.n_views, batch_size=hparams["cache_batch_size"],
            shard_size=hparams["cache_shard_size"],
            shard_seconds=hparams["cache_shard_seconds"], dtype=hparams["cache_dtype"],
            topk=hparams["cache_topk"], rank=rank,
            progress=functools.partial(progress_bar, disable=not if_main_process()),
            barrier=dist.barrier if distributed else lambda: None,
            targets=teacher_targets(hparams, dataset),
        )  # fmt: skip
    if hparams["check_cache"] > 0 and if_main_process():
        cache = TeacherCache(folder)
        count = min(hparams["check_cache"], len(cache))
        chosen = random.Random(0).sample(sorted(cache.index), count)
        classes = teacher_targets(hparams, dataset)
        labels = {u: int(classes([u])[0]) for u in chosen} if classes is not None else None
        worst = verify_cache(
            cache, teacher, replay, {u: signal(u) for u in chosen}, device, targets=labels
        )
        logger.info("check_cache: %d cached clips match the live teacher (largest relative "
                    "error %.2g)", len(chosen), worst)  # fmt: skip
    return folder
