"""The skeleton's hooks for runs that train on something else than the prepared clips (what
synthesize.py's data-free runs use instead of a fork of run_experiment): ``teacher_side`` loads
the teacher of a training run only, and ``prepare_run``'s entries join the run record, so a
folder refuses a resume on another training set. Real FSDD clips, the sound recipe's pipeline,
no epoch trained (``--number_of_epochs 0``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import RECIPE, write_fsdd_manifests

from kd_modules.experiment import Recipe, run_experiment
from kd_modules.run_folder import RunRecordMismatch

HP = RECIPE / "hparams"


def recipe(train, calls: list, training_set: str) -> Recipe:
    """The sound recipe's Recipe with both hooks recording their calls."""

    def teacher_side(hparams: dict) -> tuple:
        calls.append("teacher_side")
        return None, None

    def prepare_run(hparams: dict, run_opts: dict, datasets: dict, teacher) -> dict:
        calls.append(("prepare_run", teacher, sorted(datasets)))
        return {"training_set": training_set}

    return Recipe(
        train.dataio_prepare,
        train.make_brain,
        train.write_run_results,
        teacher_side=teacher_side,
        prepare_run=prepare_run,
    )


def test_prepare_run_entries_join_the_run_record(tmp_path: Path, recipe_train):
    data = write_fsdd_manifests(tmp_path / "data", {"train": 1, "valid": 1, "test": 1})
    out = tmp_path / "run"
    args = [
        str(HP / "common.yaml"),
        str(HP / "student/xvector_small.yaml"),
        str(HP / "kd/none.yaml"),
        "--data_folder",
        str(data),
        "--output_folder",
        str(out),
        "--exp_root",
        str(tmp_path),
        "--n_classes",
        "10",
        "--num_workers",
        "0",
        "--device",
        "cpu",
        "--noprogressbar",
        "--number_of_epochs",
        "0",
        "--skip_test",
        "True",
    ]
    calls: list = []
    run_experiment(args, recipe(recipe_train, calls, "pool a"))
    assert json.loads((out / "run_record.json").read_text())["training_set"] == "pool a"
    run_experiment([*args, "--test_only"], recipe(recipe_train, calls, "pool a"))
    splits = ["test", "train", "valid"]
    assert calls == ["teacher_side", ("prepare_run", None, splits), ("prepare_run", None, splits)]
    with pytest.raises(RunRecordMismatch, match="training_set: 'pool a' -> 'pool b'"):
        run_experiment([*args, "--test_only"], recipe(recipe_train, calls, "pool b"))
