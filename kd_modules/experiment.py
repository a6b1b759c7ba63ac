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
import gc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import speechbrain as sb
import torch.distributed as dist
from speechbrain.utils.distributed import if_main_process, run_on_main

from kd_modules.hparams import load_composed, parse_recipe_arguments, write_composed
from kd_modules.hub.sources import load_teacher_side
from kd_modules.provenance import run_record
from kd_modules.run_folder import (
    SessionClock,
    check_run_record,
    folder_lock,
    record_training,
    training_status,
)


def no_run_preparation(hparams: dict, run_opts: dict, datasets: dict, teacher) -> dict:
    """The default :attr:`Recipe.prepare_run`: the run trains on its datasets as they are."""
    return {}


@dataclass
class Recipe:
    """What a recipe's ``train.py`` adds to :func:`run_experiment`: its data, Brain and results.

    ``dataio_prepare(hparams) -> {split: dataset}``; ``make_brain(hparams, run_opts, teacher,
    cache) -> DistillBrain``; ``write_results(brain, hparams, datasets, train_info)`` evaluates
    and writes results.json; ``splits(hparams)`` names the manifests the run is trained and
    tested on (recorded in the run folder).

    Two hooks for runs that train on something else than the prepared clips (data-free KD:
    ``synthesize.py``): ``teacher_side(hparams) -> (teacher, cache)`` loads the frozen teacher
    of a training run (default :func:`~kd_modules.hub.sources.load_teacher_side`; not called with
    ``--test_only``, where the teacher is None); ``prepare_run(hparams, run_opts, datasets,
    teacher) -> dict`` runs next, on every rank, and may replace ``datasets["train"]`` and
    adapt ``hparams`` (e.g. a synthetic pool and its loader); the entries it returns join the
    run record, so a run folder refuses a resume on other training data.
    """

    dataio_prepare: Callable[[dict], dict]
    make_brain: Callable[..., Any]
    write_results: Callable[[Any, dict, dict, dict], None]
    splits: Callable[[dict], tuple[str, ...]] = lambda hparams: ("train", "valid", "test")
    teacher_side: Callable[[dict], tuple[Any, Any]] = load_teacher_side
    prepare_run: Callable[[dict, dict, dict, Any], dict] = no_run_preparation


def train_run(brain, hparams: dict, datasets: dict, teacher, cache, record: dict) -> None:
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
    train (unless ``--test_only``) and evaluate (unless ``skip_test``), with the recipe's hooks
    (:class:`Recipe`)."""
    with experiment_folder(argv) as (hparams, run_opts, output):
        datasets = recipe.dataio_prepare(hparams)
        teacher, cache = (None, None) if run_opts["test_only"] else recipe.teacher_side(hparams)
        if cache is not None:  # the training clips come with their cached views
            hparams["view_replay"].attach(datasets["train"], cache)
        extra = recipe.prepare_run(hparams, run_opts, datasets, teacher)
        record = {**run_record(hparams, teacher, recipe.splits(hparams)), **extra}
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
    if not (dist.is_available() and dist.is_initialized()):
        return
    brain.modules = None  # drops the DDP wrappers (and their reducers' pending work)
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
