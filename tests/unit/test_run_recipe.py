"""conftest.run_recipe, the one way the tests run a recipe script: its exit, output and timeout."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from conftest import run_recipe


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie waiting for its parent to reap it does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def script(folder: Path, body: str) -> Path:
    """``folder``/run.sh with ``body``: a stand-in recipe folder."""
    (folder / "run.sh").write_text("#!/usr/bin/env bash\n" + body)
    return folder


def test_output_exit_and_environment_of_a_run(tmp_path):
    recipe = script(tmp_path, 'echo "out $1 $OMP_NUM_THREADS $PWD"; echo err >&2; exit "$2"\n')
    done = run_recipe(recipe, "a", "3", check=False)
    assert done.returncode == 3
    assert done.stdout == f"out a 1 {tmp_path}\n" and done.stderr == "err\n"


def test_a_failed_run_fails_the_test_with_both_streams(tmp_path):
    recipe = script(tmp_path, "echo progress; echo 'bad option' >&2; exit 2\n")
    with pytest.raises(pytest.fail.Exception) as failure:
        run_recipe(recipe, "--stage", "1")
    message = str(failure.value)
    assert message.startswith(f"{recipe / 'run.sh'} --stage 1: exit 2\n")
    assert "progress" in message and "bad option" in message


def test_a_run_past_its_timeout_is_stopped_with_its_children(tmp_path):
    """A child that keeps the output open (as torchrun's workers can) neither hangs the test nor
    outlives it: the whole process group is stopped at the timeout."""
    pid_file = tmp_path / "child.pid"
    recipe = script(tmp_path, f"sleep 60 & echo $! > {pid_file}; echo started; wait\n")
    start = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="still running after 1 s"):
        run_recipe(recipe, timeout_s=1)
    assert time.monotonic() - start < 30
    time.sleep(0.2)
    assert not alive(int(pid_file.read_text()))
