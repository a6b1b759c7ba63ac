"""DDP with an unreadable clip: run.sh's torchrun launcher (``--ngpu 2 --device cpu``, gloo) trains
a FitNets student (DDP-wrapped student and regressor) with batches of one clip, where one of the
four training clips is a truncated real FLAC. Every epoch one rank gets that clip alone, an all-bad
batch, while the other rank trains on a real clip: the ranks must still run the same forward and
backward collectives, or gloo hangs or fails. A hang fails the test at the timeout.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from conftest import FSDD_CLIPS, RECIPE, live_fitnets_options, run_recipe, write_fsdd_data_info

from kd_modules.dataio import AudioReadError, read_audio

pytestmark = pytest.mark.slow

EPOCHS = 2
STEPS_PER_EPOCH = 2  # 4 training clips, batch size 1, 2 ranks
TIMEOUT_S = 240  # a normal stage-5 run takes ~10 s


def options(tmp: Path, epochs: int = EPOCHS) -> list[str]:
    """run.sh's options of every call here: FSDD under ``tmp``, FitNets, batches of one clip."""
    return live_fitnets_options(tmp, f"--number_of_epochs {epochs} --num_workers 0 --batch_size 1")


def write_manifests(data: Path, corrupt: Path) -> None:
    """Train on 3 real clips + ``corrupt``; validate on 2 and test on 1 real clips."""
    clips = sorted(FSDD_CLIPS.glob("*.flac"))
    splits = {"train": [*clips[:3], corrupt], "valid": clips[3:5], "test": clips[5:6]}
    data.mkdir(parents=True)
    for split, files in splits.items():
        entries = {
            path.stem: {"wav": str(path), "duration": 0.5, "label_id": int(path.stem[0])}
            for path in files
        }
        (data / f"{split}.json").write_text(json.dumps(entries))


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("ddp_safety")
    real = sorted(FSDD_CLIPS.glob("*.flac"))[-1]
    corrupt = tmp / f"{real.stem[0]}_truncated.flac"
    corrupt.write_bytes(real.read_bytes()[: real.stat().st_size // 2])
    with pytest.raises(AudioReadError, match="corrupt"):
        read_audio(corrupt)
    data = tmp / "data" / "fsdd"
    write_manifests(data / "fold1", corrupt)
    write_fsdd_data_info(data)
    run_recipe(RECIPE, *options(tmp, epochs=1), "--stage", "2", "--stop_stage", "2")  # one process
    # a hang (gloo waiting on the other rank) fails at the timeout, the process group stopped
    ddp = run_recipe(
        RECIPE,
        *options(tmp),
        "--stage",
        "5",
        "--stop_stage",
        "5",
        "--ngpu",
        "2",
        timeout_s=TIMEOUT_S,
    )
    output = ddp.stdout + ddp.stderr
    student = tmp / "exp" / "fsdd" / "fold1" / "student" / "xvector_small" / "fitnets" / "seed1"
    return {"student": student, "output": output, "corrupt": corrupt}


def test_ranks_stay_in_step_through_an_all_bad_batch(ddp_run):
    assert f"cannot read audio file {ddp_run['corrupt']}" in ddp_run["output"]
    checkpoint = sorted((ddp_run["student"] / "save").glob("CKPT+*"))[-1]
    brain = yaml.safe_load((checkpoint / "brain.ckpt").read_text())
    assert brain["optimizer_step"] == EPOCHS * STEPS_PER_EPOCH, brain


def test_all_bad_batch_adds_no_loss_terms(ddp_run):
    history = json.loads((ddp_run["student"] / "history.json").read_text())
    train = [entry["stats"] for entry in history if entry["stage"] == "train"]
    assert len(train) == EPOCHS
    for stats in train:
        assert math.isfinite(stats["ce"]) and stats["ce"] > 0.0, stats
        assert math.isfinite(stats["kd_fitnets"]) and stats["kd_fitnets"] > 0.0, stats
