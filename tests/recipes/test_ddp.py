"""DDP on CPU: run.sh's torchrun launcher (``--ngpu 2 --device cpu`` -> 2 gloo processes) trains a
FitNets student, whose regressor is a trainable adapter, from a live teacher on real FSDD clips.

The teacher is trained first in one process (stage 2); stages 4-5 then run under torchrun and
stage 7 evaluates the DDP checkpoints in one process, as ``run.sh`` does for any experiment.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import (
    RECIPE,
    live_fitnets_options,
    run_recipe,
    write_fsdd_data_info,
    write_fsdd_manifests,
)
from hyperpyyaml import load_hyperpyyaml

from kd_modules.brains.distill import KDObjective
from kd_modules.checkpoints import Checkpointer
from kd_modules.teacher import Teacher

pytestmark = pytest.mark.slow

TRAIN_PER_DIGIT = 3  # 30 training clips: 15 per rank, one batch of 16 per rank and epoch
EPOCHS = 2


def options(tmp: Path, epochs: int) -> list[str]:
    """run.sh's options of every call here: FSDD under ``tmp``, a live-teacher FitNets student."""
    return live_fitnets_options(tmp, f"--number_of_epochs {epochs} --num_workers 0")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("ddp")
    data = tmp / "data" / "fsdd"
    write_fsdd_manifests(data / "fold1", {"train": TRAIN_PER_DIGIT, "valid": 1, "test": 1})
    write_fsdd_data_info(data)
    fold = tmp / "exp" / "fsdd" / "fold1"
    teacher = fold / "teacher" / "xvector_large" / "none" / "seed1"
    student = fold / "student" / "xvector_small" / "fitnets" / "seed1"

    run_recipe(RECIPE, *options(tmp, epochs=1), "--stage", "2", "--stop_stage", "2")  # one process
    ddp = run_recipe(
        RECIPE, *options(tmp, EPOCHS), "--stage", "4", "--stop_stage", "5", "--ngpu", "2"
    )
    assert not (student / "results.json").exists()  # stages 2/4/5 train only
    checkpoints = sorted((student / "save").glob("CKPT+*"))
    best = Checkpointer(student / "save").find_checkpoint(max_key="accuracy").path
    evaluation = run_recipe(RECIPE, *options(tmp, EPOCHS), "--stage", "7", "--stop_stage", "7")
    return {
        "teacher": teacher,
        "student": student,
        "checkpoints": checkpoints,
        "best": best,
        "ddp": ddp,
        "evaluation": evaluation,
    }


def load_checkpoint(folder: Path, name: str) -> dict:
    return torch.load(folder / f"{name}.ckpt", map_location="cpu", weights_only=False)


def test_main_process_alone_writes_one_checkpoint_and_one_log(ddp_run):
    student = ddp_run["student"]
    # SpeechBrain keeps the best-accuracy and the most recent checkpoint: one or two, never one
    # per rank (each epoch's save is made once, by the main process)
    checkpoints = ddp_run["checkpoints"]
    assert 1 <= len(checkpoints) <= 2, checkpoints
    assert all((c / "COMPLETE").is_file() for c in checkpoints)
    assert not list(student.glob(".*.tmp*")), "leftover temporary files: concurrent writers?"
    log = (student / "train_log.txt").read_text().splitlines()
    epoch_lines = [line.split(",")[0] for line in log if line.startswith("epoch:")]
    assert epoch_lines == [f"epoch: {e}" for e in range(1, EPOCHS + 1)]  # once, not per rank
    assert sum(line.startswith("Epoch loaded") for line in log) == 1  # stage 7, one process
    history = json.loads((student / "history.json").read_text())
    for stage in ("train", "valid"):
        epochs = [entry["epoch"] for entry in history if entry["stage"] == stage]
        assert epochs == list(range(1, EPOCHS + 1)), history
    assert all("kd_fitnets" in e["stats"] for e in history if e["stage"] == "train")


def test_checkpoint_holds_the_student_and_the_fitnets_regressor(ddp_run):
    student = ddp_run["student"]
    checkpoint = ddp_run["best"]
    assert {"model.ckpt", "kd_objective.ckpt", "optimizer.ckpt", "counter.ckpt"} <= {
        p.name for p in checkpoint.iterdir()
    }
    with open(student / "hyperparams.yaml") as stream:
        hparams = load_hyperpyyaml(stream)
    model_state = load_checkpoint(checkpoint, "model")
    kd_state = load_checkpoint(checkpoint, "kd_objective")
    # saved from the modules inside the DDP wrappers: no "module." prefix, strict loads work
    assert not any(key.startswith("module.") for key in [*model_state, *kd_state])
    hparams["model"].load_state_dict(model_state)
    objective = KDObjective(hparams["kd_losses"], hparams["kd_weights"])
    objective.load_state_dict(kd_state)
    assert {key: tuple(value.shape) for key, value in kd_state.items()} == {
        "losses.fitnets.regressor.weight": (256, 128),
        "losses.fitnets.regressor.bias": (256,),
    }


def test_both_ranks_trained_the_student_and_the_adapter(ddp_run):
    """30 clips sharded over 2 ranks: one optimiser step per epoch (one process would take 2)."""
    checkpoint = ddp_run["best"]
    epoch = int((checkpoint / "counter.ckpt").read_text())
    brain = yaml.safe_load((checkpoint / "brain.ckpt").read_text())
    assert brain["optimizer_step"] == epoch, (brain, epoch)

    with open(ddp_run["student"] / "hyperparams.yaml") as stream:
        n_model = len(list(load_hyperpyyaml(stream)["model"].parameters()))
    state = load_checkpoint(checkpoint, "optimizer")["state"]
    assert len(state) == n_model + 2  # every student parameter + regressor weight and bias
    assert all(int(s["step"]) == epoch for s in state.values())
    regressor = [state[n_model], state[n_model + 1]]
    assert [tuple(s["exp_avg"].shape) for s in regressor] == [(256, 128), (256,)]
    assert all(s["exp_avg"].abs().sum() > 0 for s in regressor)  # gradients reached the adapter


def test_ddp_run_records_the_live_teacher(ddp_run):
    info = json.loads((ddp_run["student"] / "train_info.json").read_text())
    teacher = Teacher.from_experiment(ddp_run["teacher"], max_key="accuracy")
    assert info["teacher_fingerprint"] == teacher.fingerprint
    assert info["teacher_cache"] is None  # --use_cache false: the teacher ran on each rank


def test_stage_7_evaluates_the_ddp_checkpoint(ddp_run):
    results = json.loads((ddp_run["student"] / "results.json").read_text())
    assert (results["role"], results["method"], results["arch"]) == (
        "student",
        "fitnets",
        "xvector_small",
    )
    assert Path(results["checkpoint"]) == ddp_run["best"]
    assert 0.0 <= results["metrics"]["accuracy"] <= 1.0
    info = json.loads((ddp_run["student"] / "train_info.json").read_text())
    assert results["teacher_fingerprint"] == info["teacher_fingerprint"]
    assert results["epochs"] == EPOCHS
