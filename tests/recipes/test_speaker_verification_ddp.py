"""DDP on CPU for speaker verification: ``run.sh --ngpu 2 --device cpu`` (2 gloo processes under
torchrun) builds the IML-KD teacher cache and trains an IML-KD student from it, on the
VoxCeleb1-layout stand-in (real LibriSpeech / VCTK speech).

Stages 0-2 (stand-in, prepare, a tiny teacher) run in one process; stages 3-5 (the cache, the
student alone, the IML-KD student) under torchrun; stage 7 verifies in one process, as ``run.sh``
does for any experiment. Each rank attributes its own share of the training segments and writes
its own shards: together they hold every segment exactly once.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from conftest import SPEAKER_VERIFICATION, run_recipe
from safetensors import safe_open

pytestmark = pytest.mark.slow

ARCH = "ecapa_tiny"
EPOCHS, BATCH = 2, 16
EXTRA_ARGS = f"--number_of_epochs {EPOCHS} --batch_size {BATCH} --num_workers 0 --ig_steps 2"


def options(tmp: Path) -> list[str]:
    """run.sh's options of every call here: the stand-in under ``tmp``, one IML-KD student."""
    return [
        "--python",
        sys.executable,
        "--standin",
        "true",
        "--dataset",
        "voxceleb1",
        "--device",
        "cpu",
        "--teacher",
        ARCH,
        "--students",
        ARCH,
        "--methods",
        "imlkd",
        "--data_dir",
        str(tmp / "data"),
        "--exp_dir",
        str(tmp / "exp"),
        "--extra_args",
        f"{EXTRA_ARGS} --cache_views 1",
    ]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, shared_data) -> dict:
    tmp = tmp_path_factory.mktemp("speaker_ddp")
    common = options(tmp)
    run_recipe(SPEAKER_VERIFICATION, *common, "--stage", "0", "--stop_stage", "2")  # one process
    run_recipe(SPEAKER_VERIFICATION, *common, "--stage", "3", "--stop_stage", "5", "--ngpu", "2")
    student = tmp / "exp" / "voxceleb1" / "student" / ARCH / "imlkd" / "seed1"
    checkpoints = sorted((student / "save").glob("CKPT+*"))
    verified = run_recipe(SPEAKER_VERIFICATION, *common, "--stage", "7", "--stop_stage", "7")
    train = json.loads((tmp / "data" / "voxceleb1" / "train.json").read_text())
    return {
        "student": student,
        "checkpoints": checkpoints,
        "segments": sorted(train),
        "stage7": verified.stdout,
    }


def segments_of_shards(folder: Path, rank: int) -> list[str]:
    """The segment ids rank ``rank``'s shards hold an ``ig_weight`` for (one per cached view)."""
    found = []
    for shard in sorted(folder.glob(f"shard-r{rank}-*.safetensors")):
        with safe_open(str(shard), "pt") as handle:
            found += [key.split("/")[:-2] for key in handle.keys() if key.endswith("/ig_weight")]
    return ["/".join(parts) for parts in found]


def test_both_ranks_cached_and_together_cover_every_segment_once(ddp_run):
    info = json.loads((ddp_run["student"] / "train_info.json").read_text())
    folder = Path(info["teacher_cache"])
    assert {shard.name.split("-")[1] for shard in folder.glob("shard-*")} == {"r0", "r1"}
    per_rank = [segments_of_shards(folder, rank) for rank in (0, 1)]
    assert all(per_rank) and not set(per_rank[0]) & set(per_rank[1])
    counts = Counter(per_rank[0] + per_rank[1])
    assert sorted(counts) == ddp_run["segments"] and set(counts.values()) == {1}
    assert abs(len(per_rank[0]) - len(per_rank[1])) <= 1  # an even share (rank::world)
    meta = json.loads((folder / "meta.json").read_text())
    assert "ig_weight" in meta["names"] and meta["utterances"] == len(ddp_run["segments"])


def test_main_process_alone_writes_the_checkpoint_and_the_log(ddp_run):
    student = ddp_run["student"]
    assert len(ddp_run["checkpoints"]) == 1, ddp_run["checkpoints"]
    log = (student / "train_log.txt").read_text().splitlines()
    epochs = [line.split(",")[0] for line in log if line.startswith("epoch:")]
    assert epochs == [f"epoch: {e}" for e in range(1, EPOCHS + 1)]  # once, not once per rank
    history = json.loads((student / "history.json").read_text())
    assert all(e["stats"]["kd_mlkd"] > 0 for e in history if e["stage"] == "train")


def test_each_rank_took_half_of_the_training_segments(ddp_run):
    checkpoint = ddp_run["checkpoints"][0]
    epoch = int((checkpoint / "counter.ckpt").read_text())
    steps = yaml.safe_load((checkpoint / "brain.ckpt").read_text())["optimizer_step"]
    per_rank = math.ceil(len(ddp_run["segments"]) / 2)
    assert steps == epoch * math.ceil(per_rank / BATCH)  # one process would take about twice
    state = torch.load(checkpoint / "optimizer.ckpt", map_location="cpu", weights_only=False)
    assert all(int(s["step"]) == steps for s in state["state"].values())


def test_the_ddp_student_trained_and_stage_7_verified_it(ddp_run):
    student = ddp_run["student"]
    info = json.loads((student / "train_info.json").read_text())
    assert info["finished"] and info["epochs_done"] == EPOCHS
    assert re.search(rf"stage 7: evaluating {re.escape(str(student))}$", ddp_run["stage7"], re.M)
    results = json.loads((student / "results.json").read_text())
    assert Path(results["checkpoint"]) == ddp_run["checkpoints"][0]
    assert (results["method"], results["epochs"]) == ("imlkd", EPOCHS)
    assert math.isfinite(results["metrics"]["eer"]) and 0.0 <= results["metrics"]["eer"] <= 1.0
    assert results["trials"] > 0 and (student / "scores_asnorm.txt").is_file()
