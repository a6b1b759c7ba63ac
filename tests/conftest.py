"""Shared fixtures: real clips shipped in tests/samples and the larger set in ../shared/data."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "tests" / "samples"
SHARED_DATA = REPO.parent / "shared" / "data"
RECIPE = REPO / "recipes" / "sound_classification"
ROLES = ("train", "valid", "test")
FSDD_CLIPS = SAMPLES / "fsdd" / "free-spoken-digit-dataset" / "recordings"


def run_recipe(
    recipe: Path,
    *args: str | Path,
    program: Sequence[str | Path] | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 600,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """Run ``recipe``'s ``run.sh *args`` as a user does: from the recipe folder, one OMP thread.

    ``program`` replaces ``bash run.sh`` (e.g. ``[sys.executable, "train.py"]`` or a torchrun
    launcher), with the repository root on ``PYTHONPATH`` as run.sh puts it there (the scripts
    import their siblings as ``recipes.<name>.*``); ``cwd`` replaces the recipe folder, ``env``
    adds variables. stdout and stderr go to files, not pipes (a torchrun worker in a session of
    its own can hold a pipe open after its parent has exited), and the command runs in a session
    of its own: past ``timeout_s`` the whole group gets SIGTERM and the test fails. ``check``: a
    non-zero exit fails the test with the command and the tails of both streams; ``check=False``
    returns it for the test to judge.
    """
    program = ["bash", str(recipe / "run.sh")] if program is None else [str(p) for p in program]
    command = [*program, *(str(arg) for arg in args)]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            command,
            cwd=recipe if cwd is None else cwd,
            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(env or {})},
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        timed_out = not _wait_or_stop(proc, timeout_s)
        out.seek(0)
        err.seek(0)
        done = subprocess.CompletedProcess(command, proc.returncode, out.read(), err.read())
    if timed_out:
        pytest.fail(f"{' '.join(command[1:])}: still running after {timeout_s} s\n{tails(done)}")
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(command[1:])}: exit {done.returncode}\n{tails(done)}")
    return done


def torchrun(processes: int) -> list[str]:
    """A ``run_recipe`` program launching a script on ``processes`` local ranks (DDP on CPU)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
    ]


def _wait_or_stop(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Wait for ``proc``; True when it ended in time, else SIGTERM (then SIGKILL) its group."""
    try:
        proc.wait(timeout=timeout_s)
        return True
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # torchrun stops its workers on SIGTERM
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return False


def tails(proc: subprocess.CompletedProcess, chars: int = 6000) -> str:
    """The last ``chars`` characters of a finished command's stdout and stderr, labelled."""
    return f"--- stdout ---\n{proc.stdout[-chars:]}\n--- stderr ---\n{proc.stderr[-chars:]}"


@pytest.fixture(autouse=True)
def _root_logging_outlives_no_test():
    """Give the root logger back its handlers and level after each test.

    An experiment built in-process (``sb.create_experiment_directory``) runs SpeechBrain's
    ``dictConfig``, whose console handler holds that test's captured ``sys.stdout``; left on the
    root logger it writes "--- Logging error --- ... I/O operation on closed file" into every
    later test's stderr.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real datasets in their official layouts); skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is not available")
    return SHARED_DATA


@pytest.fixture(scope="session")
def recipe_train():
    """The sound-classification recipe's train.py module (dataio_prepare, main)."""
    from recipes.sound_classification import train

    return train


def live_fitnets_options(tmp: Path, extra_args: str) -> list[str]:
    """Sound-classification run.sh options of the DDP tests: FSDD prepared under ``tmp``, the
    x-vector teacher run live (no cache), a FitNets student, and ``extra_args`` for every run."""
    return [
        *("--python", sys.executable, "--dataset", "fsdd", "--teacher", "xvector_large"),
        *("--device", "cpu", "--data_dir", str(tmp / "data"), "--exp_dir", str(tmp / "exp")),
        *("--methods", "fitnets", "--use_cache", "false", "--extra_args", extra_args),
    ]


def write_fsdd_data_info(data: Path, folds: Sequence[int] = (1,)) -> Path:
    """What stage 1 writes beside hand-made FSDD manifests in ``data`` (``data/fold<k>/*.json``):
    labels.json and data_info.json, the facts run.sh reads before stages 2-9."""
    from kd_modules.data_info import DATA_INFO, data_info

    classes = [str(digit) for digit in range(10)]
    (data / "labels.json").write_text(json.dumps(classes))
    files = ["labels.json"] + [f"fold{k}/{role}.json" for k in folds for role in ROLES]
    info = data_info(
        data, "fsdd", len(classes), files, classes=classes, split="seeded", folds=list(folds)
    )
    (data / DATA_INFO).write_text(json.dumps(info))
    return data


def write_fsdd_manifests(folder: Path, per_split: dict[str, int]) -> Path:
    """Train/valid/test manifests over the first clips of each digit (real FSDD recordings)."""
    clips = sorted(FSDD_CLIPS.glob("*.flac"))
    by_digit: dict[str, list[Path]] = {}
    for clip in clips:
        by_digit.setdefault(clip.stem.split("_")[0], []).append(clip)
    folder.mkdir(parents=True, exist_ok=True)
    offset = 0
    for split, count in per_split.items():
        entries = {}
        for digit, files in sorted(by_digit.items()):
            for clip in files[offset : offset + count]:
                entries[clip.stem] = {
                    "wav": str(clip),
                    "duration": sf.info(str(clip)).duration,
                    "label": digit,
                    "label_id": int(digit),
                    "group": clip.stem,
                }
        (folder / f"{split}.json").write_text(json.dumps(entries))
        offset += count
    return folder


@pytest.fixture
def fsdd_manifests(tmp_path: Path) -> Path:
    """A tiny real-audio classification task: 10 digits x (4 train, 1 valid, 1 test) clips."""
    return write_fsdd_manifests(tmp_path / "data", {"train": 4, "valid": 1, "test": 1})


AUDIO_TAGGING = REPO / "recipes" / "audio_tagging"
SPEAKER_VERIFICATION = REPO / "recipes" / "speaker_verification"
