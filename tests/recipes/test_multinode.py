"""Several nodes through torchrun: run.sh's --nnodes / --node_rank / --master_addr / --master_port.

Two run.sh processes started side by side play two "nodes" of one gloo process each on 127.0.0.1
(global ranks 0 and 1, both LOCAL_RANK 0, as on two machines). They build the teacher cache
(stage 3) and train a KD student from it (stages 4-5) into one exp folder; a single-node run of
the same stages with ``--ngpu 2`` (the DDP path the other tests check against one process) is
the reference. Wrong node options stop run.sh with one line before any stage.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml
from conftest import RECIPE, REPO, run_recipe, write_fsdd_data_info, write_fsdd_manifests

from kd_modules.cache import TeacherCache
from kd_modules.checkpoints import Checkpointer

TRAIN_PER_DIGIT = 3  # 30 training clips: 15 per rank, one batch of 16 per rank and epoch
EPOCHS = 1
FOLD = Path("fsdd") / "fold1"
TEACHER = FOLD / "teacher" / "xvector_large" / "none" / "seed1"
STUDENT = FOLD / "student" / "xvector_small" / "kd" / "seed1"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (node 0's rendezvous)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def options(tmp: Path, exp: str) -> list[str]:
    """run.sh's options of every call here: FSDD under ``tmp``, Hinton KD from the cache."""
    return [
        *("--python", sys.executable, "--dataset", "fsdd", "--teacher", "xvector_large"),
        *("--device", "cpu", "--data_dir", str(tmp / "data"), "--exp_dir", str(tmp / exp)),
        *("--methods", "kd", "--use_cache", "true", "--kd_args", "--cache_views 2"),
        *("--extra_args", f"--number_of_epochs {EPOCHS} --num_workers 0"),
    ]


def node_options(node_rank: int, port: int) -> list[str]:
    return [
        *("--nnodes", "2", "--node_rank", str(node_rank)),
        *("--master_addr", "127.0.0.1", "--master_port", str(port)),
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """The teacher (one process); stage 3, then stage 5, on two "nodes" side by side; the
    references: stage 3 in one process, and stage 5 on one node of 2 ranks from the nodes' cache
    (a student trained on 2 ranks differs from one trained in one process: other batches)."""
    tmp = tmp_path_factory.mktemp("multinode")
    data = tmp / "data" / "fsdd"
    write_fsdd_manifests(data / "fold1", {"train": TRAIN_PER_DIGIT, "valid": 1, "test": 1})
    write_fsdd_data_info(data)
    run_recipe(RECIPE, *options(tmp, "nodes"), "--stage", "2", "--stop_stage", "2")
    for reference in ("one_process", "one_node"):  # the same teacher, in their own exp folders
        shutil.copytree(tmp / "nodes" / TEACHER, tmp / reference / TEACHER)
    logs = [run_on_two_nodes(tmp, stage) for stage in ("3", "5")]
    run_recipe(RECIPE, *options(tmp, "one_process"), "--stage", "3", "--stop_stage", "3")
    (tmp / "one_node" / "cache").symlink_to(tmp / "nodes" / "cache")
    one_node = (*options(tmp, "one_node"), "--ngpu", "2")
    run_recipe(RECIPE, *one_node, "--stage", "5", "--stop_stage", "5")
    return {**{exp: tmp / exp for exp in ("nodes", "one_process", "one_node")}, "logs": logs}


def run_on_two_nodes(tmp: Path, stage: str) -> list[subprocess.CompletedProcess]:
    """run.sh --stage STAGE as node 0 and node 1 at once (each waits for the other to join)."""
    port, stages = free_port(), ("--stage", stage, "--stop_stage", stage)
    with ThreadPoolExecutor(2) as pool:
        nodes = [
            pool.submit(run_recipe, RECIPE, *options(tmp, "nodes"), *stages, *node_options(r, port))
            for r in (0, 1)
        ]
        return [node.result() for node in nodes]


def only_cache(exp: Path) -> TeacherCache:
    (folder,) = (exp / "cache").iterdir()
    return TeacherCache(folder)


def best_model(student: Path) -> dict:
    best = Checkpointer(student / "save").find_checkpoint(max_key="accuracy").path
    return torch.load(best / "model.ckpt", map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_two_nodes_build_one_store_from_disjoint_shares(runs):
    nodes, one_process = only_cache(runs["nodes"]), only_cache(runs["one_process"])
    assert nodes.folder.name == one_process.folder.name  # the same key: teacher, data, policy
    by_rank: dict[str, set[str]] = {}
    for utt_id, shard in nodes.index.items():
        by_rank.setdefault(Path(shard).name.split("-")[1], set()).add(utt_id)
    assert set(by_rank) == {"r0", "r1"}  # each node's rank wrote its own shards
    assert not by_rank["r0"] & by_rank["r1"]
    assert len(by_rank["r0"]) == len(by_rank["r1"]) == 15 and len(nodes) == 30
    assert set(nodes.index) == set(one_process.index)
    for utt_id in sorted(one_process.index):
        for view in range(2):
            got, got_params = nodes.read(utt_id, view)
            want, want_params = one_process.read(utt_id, view)
            assert torch.equal(got_params, want_params)  # the same views, drawn per clip
            for name in one_process.names:  # float16 storage: other batches may round one ulp
                torch.testing.assert_close(got[name], want[name], rtol=2e-3, atol=2e-3)


@pytest.mark.slow
def test_two_nodes_train_one_student_equal_to_one_node(runs):
    student = runs["nodes"] / STUDENT
    checkpoints = sorted((student / "save").glob("CKPT+*"))
    assert 1 <= len(checkpoints) <= 2, checkpoints  # saved by global rank 0, not once per node
    log = (student / "train_log.txt").read_text().splitlines()
    assert [line.split(",")[0] for line in log if line.startswith("epoch:")] == ["epoch: 1"]
    best = Checkpointer(student / "save").find_checkpoint(max_key="accuracy").path
    brain = yaml.safe_load((best / "brain.ckpt").read_text())
    assert brain["optimizer_step"] == EPOCHS  # 15 clips per rank: one process would take 2
    got, want = best_model(student), best_model(runs["one_node"] / STUDENT)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], msg=name)
    for run in ("nodes", "one_node"):
        info = yaml.safe_load((runs[run] / STUDENT / "train_info.json").read_text())
        assert info["finished"] and info["teacher_cache"] is not None


@pytest.mark.slow
def test_global_rank_0_holds_the_run_folder_and_the_stage_records(runs):
    exp = runs["nodes"]
    lock = (exp / STUDENT / ".lock").read_text()
    assert " global rank 0 of 2 since " in lock, lock
    folder = only_cache(exp).folder
    assert " global rank 0 of 2 " in (folder / ".lock-r0").read_text()
    assert " global rank 1 of 2 " in (folder / ".lock-r1").read_text()
    assert (exp / STUDENT / "stage_record.json").is_file()  # written by node 0
    assert (exp / TEACHER / "cache_records" / "kd.json").is_file()
    (cache0, cache1), (student0, student1) = runs["logs"]
    for node in (cache0, cache1):  # each node ran the launch
        assert "stage 3: teacher cache for kd, fold 1 -> " in node.stdout
    for node in (student0, student1):
        assert "stage 5: student xvector_small with kd, fold 1, seed 1" in node.stdout


# ----- the options, checked before any stage ---------------------------------------------------
def refused(tmp_path: Path, *args: str) -> str:
    """run.sh's one-line error for ``args``: nothing launched, nothing written."""
    done = run_recipe(RECIPE, *options(tmp_path, "exp"), *args, check=False)
    assert done.returncode == 1 and done.stdout == "", done
    assert not (tmp_path / "exp").exists()
    (line,) = done.stderr.splitlines()
    return line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--node_rank", "2", "--master_addr", "127.0.0.1"),
            "run.sh: invalid --node_rank 2 for --nnodes 2 (allowed: 0 to 1)",
        ),
        (
            ("--node_rank", "1"),
            "run.sh: --nnodes 2 needs --master_addr HOST (node 0) or --rdzv_endpoint HOST:PORT",
        ),
        (
            ("--node_rank", "0", "--rdzv_endpoint", "node01"),
            "run.sh: invalid --rdzv_endpoint 'node01' (allowed: HOST:PORT, e.g. node01:29400)",
        ),
        (
            ("--master_addr", "a", "--rdzv_endpoint", "a:29400"),
            "run.sh: give --master_addr (with --master_port) or --rdzv_endpoint, not both",
        ),
    ],
)
def test_wrong_node_options_stop_before_any_stage(tmp_path, args, message):
    line = refused(tmp_path, "--nnodes", "2", "--stage", "2", "--stop_stage", "5", *args)
    assert line == message


def test_wrong_nnodes_stops_before_any_stage(tmp_path):
    line = refused(tmp_path, "--nnodes", "0", "--stage", "2")
    assert line == "run.sh: invalid --nnodes '0' (allowed: an integer >= 1)"
    line = refused(tmp_path, "--node_rank", "1", "--stage", "2")  # --nnodes 1: rank 0 only
    assert line == "run.sh: invalid --node_rank 1 for --nnodes 1 (allowed: 0 to 0)"


def test_stages_outside_torchrun_stay_on_one_node(tmp_path):
    """Stage 1 or 7 on every node would write the shared manifests or results at once."""
    line = refused(tmp_path, "--nnodes", "2", "--master_addr", "h", "--stage", "1")
    assert line == (
        "run.sh: --nnodes 2 runs stages 2-6 only (got --stage 1 --stop_stage 8): run stages "
        "0-1 and 7-9 on one node (README.md, Scaling out)"
    )


# ----- tools/slurm/run_stages.sbatch, with stand-ins for srun and scontrol ----------------------
SRUN = """#!/usr/bin/env bash
# srun's stand-in: the command once per node ($SLURM_NNODES), all at once, SLURM_NODEID set
while [[ "$1" == --* ]]; do shift; done
pids=()
for node in $(seq 0 $((SLURM_NNODES - 1))); do
    SLURM_NODEID=$node "$@" &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
"""


def recorder(tmp: Path) -> tuple[Path, Path]:
    """A --python that answers run.sh's questions with the real interpreter and records, instead
    of running, every launched command (one line each)."""
    stub, log = tmp / "python", tmp / "launched.txt"
    stub.write_text(
        "#!/usr/bin/env bash\n"
        'if [ "$1" = -c ] || [ "$2" = kd_modules.stages.status ] || '
        '[ "$2" = kd_modules.stages.cache_plan ]; then\n'
        f'    exec "{sys.executable}" "$@"\n'
        "fi\n"
        f'echo "$*" >> "{log}"\n'
    )
    stub.chmod(0o755)
    return stub, log


def test_slurm_script_starts_one_torchrun_per_node_with_node_0_as_rendezvous(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(SRUN)
    (bin_dir / "scontrol").write_text('#!/usr/bin/env bash\nprintf "gpu17\\ngpu18\\n"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    stub, log = recorder(tmp_path)
    data = tmp_path / "data" / "fsdd"
    write_fsdd_manifests(data / "fold1", {"train": 1, "valid": 1, "test": 1})
    write_fsdd_data_info(data)
    slurm = {"SLURM_JOB_NODELIST": "gpu[17-18]", "SLURM_NNODES": "2", "SLURM_JOB_ID": "4242"}
    run_recipe(
        RECIPE,
        str(REPO / "tools" / "slurm" / "run_stages.sbatch"),
        "sound_classification",
        *options(tmp_path, "exp")[2:],
        *("--python", str(stub), "--stage", "4", "--stop_stage", "4"),
        program=["bash"],
        cwd=REPO,
        env={"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_GPUS_ON_NODE": "4", **slurm},
    )
    launched = sorted(log.read_text().splitlines())
    rendezvous = "--nnodes=2 --node_rank={} --master_addr=gpu17 --master_port=24242"
    assert [line.split(" train.py ")[0] for line in launched] == [
        f"-m torch.distributed.run {rendezvous.format(rank)} --nproc_per_node=4" for rank in (0, 1)
    ]
    assert all(line.endswith("--distributed_backend gloo") for line in launched)


def launched(tmp: Path, *args: str) -> list[str]:
    """The commands run.sh launches for stage 4 with ``args`` (recorded, not run)."""
    stub, log = recorder(tmp)
    data = tmp / "data" / "fsdd"
    write_fsdd_manifests(data / "fold1", {"train": 1, "valid": 1, "test": 1})
    write_fsdd_data_info(data)
    stage_4 = ("--python", str(stub), "--stage", "4", "--stop_stage", "4")
    run_recipe(RECIPE, *options(tmp, "exp")[2:], *stage_4, *args)
    return log.read_text().splitlines()


@pytest.mark.parametrize(
    ("args", "launcher"),
    [
        ((), "train.py"),
        (("--ngpu", "2"), "-m torch.distributed.run --standalone --nproc_per_node=2 train.py"),
        (
            ("--nnodes", "3", "--node_rank", "2", "--master_addr", "node01"),
            "-m torch.distributed.run --nnodes=3 --node_rank=2 --master_addr=node01 "
            "--master_port=29500 --nproc_per_node=1 train.py",
        ),
        (
            ("--nnodes", "2", "--rdzv_endpoint", "node01:29400", "--ngpu", "4"),
            "-m torch.distributed.run --nnodes=2 --rdzv_backend=c10d "
            "--rdzv_endpoint=node01:29400 --nproc_per_node=4 train.py",
        ),
    ],
)
def test_launch_gives_torchrun_the_rendezvous(tmp_path, args, launcher):
    (command,) = launched(tmp_path, *args)
    assert command.startswith(f"{launcher} hparams/common.yaml "), command


@pytest.mark.parametrize(("node_rank", "recorded"), [("0", True), ("1", False)])
def test_node_0_alone_writes_the_stage_record(tmp_path, node_rank, recorded):
    """Every node's run.sh launches the same run; the record that it is trained (which later
    runs read to skip it) is written once, by node 0, not by every node into the shared folder."""
    student = tmp_path / "exp" / FOLD / "student" / "xvector_small" / "none" / "seed1"
    student.mkdir(parents=True)
    (student / "train_info.json").write_text('{"finished": true}')  # as a finished run leaves it
    nodes = ("--nnodes", "2", "--node_rank", node_rank, "--master_addr", "node01")
    (command,) = launched(tmp_path, *nodes)
    assert f" --output_folder {student} " in command
    assert (student / "stage_record.json").is_file() == recorded
