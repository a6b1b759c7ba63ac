"""DDP on CPU for audio tagging: ``run.sh --ngpu 2 --device cpu`` (2 gloo processes under
torchrun) trains an IUSP student from the teacher cache on the SONYC-UST stand-in tree.

Stages 0-3 (prepare, a tiny teacher, its cache) run in one process; stages 4-5 under torchrun;
stage 7 evaluates the DDP checkpoints in one process, as ``run.sh`` does for any experiment.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import AUDIO_TAGGING, run_recipe

from recipes.audio_tagging.local import make_standin as standin

pytestmark = pytest.mark.slow

EPOCHS, BATCH = 2, 4


def options(tmp: Path) -> list[str]:
    """run.sh's options of every call here: the stand-in under ``tmp``, one IUSP crnn student."""
    return [
        "--python",
        sys.executable,
        "--data_root",
        str(tmp / "release"),
        "--device",
        "cpu",
        "--students",
        "crnn",
        "--methods",
        "iusp",
        "--data_dir",
        str(tmp / "data"),
        "--exp_dir",
        str(tmp / "exp"),
        "--extra_args",
        f"--number_of_epochs {EPOCHS} --num_workers 0 --batch_size {BATCH} --teacher_width 32",
    ]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("tagging_ddp")
    standin.main(
        ["--out", str(tmp / "release"), "--n_train", "20", "--n_validate", "6", "--clip_s", "2.0"]
    )
    run_recipe(AUDIO_TAGGING, *options(tmp), "--stage", "0", "--stop_stage", "3")  # one process
    run_recipe(AUDIO_TAGGING, *options(tmp), "--stage", "4", "--stop_stage", "5", "--ngpu", "2")
    student = tmp / "exp" / "sonyc_ust" / "student" / "crnn" / "iusp" / "seed1"
    checkpoints = sorted((student / "save").glob("CKPT+*"))
    run_recipe(AUDIO_TAGGING, *options(tmp), "--stage", "7", "--stop_stage", "7")
    train = json.loads((tmp / "data" / "sonyc_ust" / "train.json").read_text())
    return {"student": student, "checkpoints": checkpoints, "n_train": len(train)}


def test_main_process_alone_writes_the_checkpoint_and_the_log(ddp_run):
    student = ddp_run["student"]
    assert len(ddp_run["checkpoints"]) == 1, ddp_run["checkpoints"]
    log = (student / "train_log.txt").read_text().splitlines()
    epochs = [line.split(",")[0] for line in log if line.startswith("epoch:")]
    assert epochs == [f"epoch: {e}" for e in range(1, EPOCHS + 1)]  # once, not once per rank
    history = json.loads((student / "history.json").read_text())
    assert all("kd_iusp" in e["stats"] for e in history if e["stage"] == "train")


def test_each_rank_took_half_of_the_training_clips(ddp_run):
    checkpoint = ddp_run["checkpoints"][0]
    epoch = int((checkpoint / "counter.ckpt").read_text())
    steps = yaml.safe_load((checkpoint / "brain.ckpt").read_text())["optimizer_step"]
    per_rank = math.ceil(ddp_run["n_train"] / 2)
    assert steps == epoch * math.ceil(per_rank / BATCH)  # one process would take twice as many
    state = torch.load(checkpoint / "optimizer.ckpt", map_location="cpu", weights_only=False)
    assert all(int(s["step"]) == steps for s in state["state"].values())


def test_the_ddp_student_read_the_cache_and_was_evaluated(ddp_run):
    info = json.loads((ddp_run["student"] / "train_info.json").read_text())
    assert info["finished"] and (Path(info["teacher_cache"]) / "meta.json").is_file()
    results = json.loads((ddp_run["student"] / "results.json").read_text())
    assert Path(results["checkpoint"]) == ddp_run["checkpoints"][0]
    assert (results["method"], results["epochs"]) == ("iusp", EPOCHS)
    assert 0.0 <= results["metrics"]["coarse_micro_auprc"] <= 1.0
    assert (ddp_run["student"] / "predictions_validate.csv").is_file()
