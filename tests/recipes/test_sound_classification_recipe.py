"""End to end: ``run.sh`` as a user runs it, on 300 real FSDD clips, every stage 0-8, then again.

One module-scoped run (2 epochs everywhere; every library method a classifier can take, IML-KD's
maps at 2 steps) is shared by the tests; a second, identical command checks that a finished
experiment resumes without retraining.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import FSDD_CLIPS, RECIPE, run_recipe

from kd_modules.results import REQUIRED_FIELDS
from kd_modules.stages.status import yaml_value
from kd_modules.teacher import Teacher

pytestmark = pytest.mark.slow

TAKES = range(5, 10)  # takes 5-9 of every speaker and digit: 6 x 10 x 5 = 300 clips
PAPER_METHODS = ("kd", "fitnets", "sp")
# the other library methods (issue 19): every one whose inputs a classifier has
MATRIX_METHODS = ("dkd", "mlkd", "embedding_cosine", "iusp", "frami_reuse", "imlkd")
KD_METHODS = (*PAPER_METHODS, *MATRIX_METHODS)
TEACHER = ("teacher", "xvector_large", "none")
STUDENTS = [("student", "xvector_small", method) for method in ("none", *KD_METHODS)]
RUNS = [TEACHER, *STUDENTS]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TIMEOUT_S = 1200


@dataclass
class Experiment:
    root: Path
    exp_dir: Path
    data_dir: Path
    command: list[str]
    first: subprocess.CompletedProcess

    def run_dir(self, role: str, arch: str, method: str) -> Path:
        return self.exp_dir / "fsdd" / "fold1" / role / arch / method / "seed1"


def explain(proc: subprocess.CompletedProcess) -> str:
    return (
        f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}"
        f"\n--- stderr ---\n{proc.stderr[-4000:]}"
    )


def stage_lines(stdout: str) -> list[tuple[int, str]]:
    """(stage number, line) of every ``[run.sh] stage N: ...`` log line, in order."""
    return [
        (int(m[1]), m[0]) for m in re.finditer(r"^.*\[run\.sh\] stage (\d+): .*$", stdout, re.M)
    ]


def checkpoint_state(exp: Experiment) -> dict[str, float]:
    """Relative path -> mtime of every file and folder under each run's save/."""
    state = {}
    for run in RUNS:
        save = exp.run_dir(*run) / "save"
        for path in [save, *sorted(save.rglob("*"))]:
            state[str(path.relative_to(exp.exp_dir))] = path.stat().st_mtime_ns
    return state


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Experiment:
    """300 real clips in the official layout, and the whole recipe run once on them."""
    root = tmp_path_factory.mktemp("sound_classification")
    recordings = root / "fsdd" / "free-spoken-digit-dataset" / "recordings"
    recordings.mkdir(parents=True)
    clips = [c for c in sorted(FSDD_CLIPS.glob("*.flac")) if int(c.stem.split("_")[2]) in TAKES]
    assert len(clips) == 300, "tests/samples should hold takes 5-9 of 6 speakers x 10 digits"
    for clip in clips:
        shutil.copy2(clip, recordings / clip.name)
    exp_dir, data_dir = root / "exp", root / "data"
    command = [
        "--python",
        sys.executable,
        "--dataset",
        "fsdd",
        "--teacher",
        "xvector_large",
        "--data_root",
        str(root / "fsdd"),
        "--split",
        "seeded",
        "--methods",
        " ".join(KD_METHODS),
        "--device",
        "cpu",
        "--exp_dir",
        str(exp_dir),
        "--data_dir",
        str(data_dir),
        "--extra_args",
        # IML-KD's maps: one whole-clip segment, 2 steps (8 cached views of 240 clips)
        "--number_of_epochs 2 --num_workers 0 --ig_steps 2 --ig_durations_s [5.0]",
    ]
    first = run_recipe(RECIPE, *command, timeout_s=TIMEOUT_S)
    return Experiment(root, exp_dir, data_dir, command, first)


@pytest.fixture(scope="module")
def resumed(experiment: Experiment) -> tuple[dict, dict, subprocess.CompletedProcess]:
    """The same command again: checkpoint state before and after, and the second run."""
    before = checkpoint_state(experiment)
    results = {
        run: experiment.run_dir(*run).joinpath("results.json").stat().st_mtime_ns for run in RUNS
    }
    second = run_recipe(RECIPE, *experiment.command, check=False)
    return {"checkpoints": before, "results": results}, checkpoint_state(experiment), second


# ----- the first run ---------------------------------------------------------------------------
def test_every_stage_runs_in_order(experiment: Experiment):
    stages = [number for number, _ in stage_lines(experiment.first.stdout)]
    assert stages == sorted(stages), stages
    assert sorted(set(stages)) == list(range(9)), stages
    assert experiment.first.stdout.rstrip().splitlines()[-1].endswith("[run.sh] done")


def test_stdout_ends_with_the_results_table(experiment: Experiment):
    stdout = experiment.first.stdout
    last_stage = stage_lines(stdout)[-1][1]
    assert "stage 8" in last_stage
    tail = stdout.split(last_stage, 1)[1].strip().splitlines()
    assert tail[-1].endswith("[run.sh] done")
    table = [line for line in tail[:-1] if line.startswith("|")]
    other = [line for line in tail[:-1] if line.strip() and not line.startswith("|")]
    assert other and all(line.startswith("Metrics in %") for line in other), other
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert "accuracy" in header and header[:4] == ["dataset", "role", "arch", "method"]
    assert set(table[1].strip("|").split("|")) == {"---"}
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]
    assert [tuple(row[1:4]) for row in rows] == [
        TEACHER,
        ("student", "xvector_small", "none"),
        *sorted(("student", "xvector_small", m) for m in KD_METHODS),
    ]
    accuracy = header.index("accuracy")
    for row in rows:
        assert row[0] == "fsdd" and row[4] == "1"
        assert 0.0 <= float(row[accuracy]) <= 100.0
    results_md = (experiment.exp_dir / "fsdd" / "RESULTS.md").read_text()
    assert all(line in results_md for line in table)


@pytest.mark.parametrize("run", RUNS, ids=lambda run: f"{run[0]}-{run[2]}")
def test_run_folder_is_complete(experiment: Experiment, run: tuple[str, str, str]):
    role, arch, method = run
    folder = experiment.run_dir(*run)
    results = json.loads((folder / "results.json").read_text())
    missing = [name for name in REQUIRED_FIELDS if name not in results]
    assert not missing, missing
    assert (results["task"], results["dataset"]) == ("sound_classification", "fsdd")
    assert (results["role"], results["arch"], results["method"]) == run
    assert (results["seed"], results["fold"]) == (1, 1)
    assert 0.0 <= results["metrics"]["accuracy"] <= 1.0
    assert results["params"] > 0 and results["macs"] > 0 and results["latency_ms"] > 0
    assert "validation" in results["selection"]
    checkpoint = Path(results["checkpoint"])
    assert checkpoint.parent == folder / "save" and checkpoint.is_dir()

    history = json.loads((folder / "history.json").read_text())
    for stage in ("train", "valid"):
        assert sorted(h["epoch"] for h in history if h["stage"] == stage) == [1, 2]
    assert (folder / "curves.png").read_bytes()[:8] == PNG_MAGIC


def test_teacher_is_larger_than_every_student(experiment: Experiment):
    params = {
        run: json.loads((experiment.run_dir(*run) / "results.json").read_text())["params"]
        for run in RUNS
    }
    assert all(params[TEACHER] > params[student] for student in STUDENTS), params


def test_kd_students_name_the_teacher_and_read_its_cache(experiment: Experiment):
    caches = sorted((experiment.exp_dir / "cache").iterdir())
    tap_sets = {
        json.dumps(yaml_value(RECIPE / "hparams" / "kd" / f"{m}.yaml", "teacher_taps"))
        for m in KD_METHODS
        if m != "imlkd"
    }
    # one per tapped-feature set, and IML-KD's own (the teacher's outputs on x~ and the maps)
    assert len(caches) == len(tap_sets) + 1
    teacher_dir = experiment.run_dir(*TEACHER)
    fingerprint = Teacher.from_experiment(teacher_dir, max_key="accuracy").fingerprint

    for run in RUNS:
        folder = experiment.run_dir(*run)
        results = json.loads((folder / "results.json").read_text())
        info = json.loads((folder / "train_info.json").read_text())
        if run[2] in KD_METHODS:
            assert results["teacher_fingerprint"] == fingerprint  # IML-KD's too: the same model
            assert info["teacher_fingerprint"] == fingerprint
            cache = Path(info["teacher_cache"])  # use_cache defaults to true
            assert cache.parent == experiment.exp_dir / "cache" and cache in caches
            meta = json.loads((cache / "meta.json").read_text())
            assert cache.name.startswith(f"{meta['fingerprint']}-")
            integrated = run[2] == "imlkd"  # keyed by the teacher and the IG settings
            assert (meta["fingerprint"] == fingerprint) != integrated, run
            assert ("ig_weight" in meta["names"]) == integrated, run
        else:
            assert results["teacher_fingerprint"] is None
            assert info["teacher_fingerprint"] is None and info["teacher_cache"] is None


# ----- resuming --------------------------------------------------------------------------------
def test_rerun_resumes_without_retraining(resumed):
    before, after, second = resumed
    assert second.returncode == 0, explain(second)
    assert after == before["checkpoints"]  # same checkpoint folders, files and mtimes
    assert "already prepared" in second.stdout + second.stderr
    assert second.stdout.rstrip().splitlines()[-1].endswith("[run.sh] done")


def test_rerun_does_not_evaluate_again(experiment: Experiment, resumed):
    before, _, second = resumed
    for run in RUNS:
        folder = experiment.run_dir(*run)
        assert f"stage 7: {folder} already evaluated" in second.stdout
        assert folder.joinpath("results.json").stat().st_mtime_ns == before["results"][run]


# ----- bad options -----------------------------------------------------------------------------
def test_unknown_option_is_refused():
    proc = run_recipe(RECIPE, "--no_such_option", "1", check=False)
    assert proc.returncode != 0
    assert "unknown option" in proc.stderr


def test_help_lists_the_options():
    proc = run_recipe(RECIPE, "--help")
    assert "--stage" in proc.stdout and "--data_root" in proc.stdout


def test_missing_data_root_is_a_clear_error(tmp_path: Path):
    proc = run_recipe(
        RECIPE,
        "--python",
        sys.executable,
        "--dataset",
        "esc50",
        "--device",
        "cpu",
        "--data_dir",
        str(tmp_path / "data"),
        "--exp_dir",
        str(tmp_path / "exp"),
        check=False,
    )
    assert proc.returncode != 0
    assert "--data_root" in proc.stderr and "esc50" in proc.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "exp").exists()
