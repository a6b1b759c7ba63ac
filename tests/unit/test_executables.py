"""The scripts a user runs as ``./run.sh`` (or a tool calls by path) are executable in a fresh
clone: a commit that staged a file's content without its mode once left every run.sh 644, and
``./run.sh`` (the READMEs' commands, tools/slurm/run_stages.sbatch) then failed with
"Permission denied"."""

from __future__ import annotations

import os

import pytest
from conftest import REPO

SCRIPTS = sorted(
    [
        *(path.relative_to(REPO) for path in (REPO / "recipes").glob("*/run.sh")),
        *(path.relative_to(REPO) for path in (REPO / "tools").rglob("*.sh")),
        *(path.relative_to(REPO) for path in (REPO / "tools" / "slurm").glob("*.sbatch")),
        *(path.relative_to(REPO) for path in (REPO / "recipes").glob("*/local/download.sh")),
    ]
)
SOURCED = {"tools/kd_options.sh", "tools/stage_helpers.sh"}  # `.`-sourced, never executed


def test_every_recipe_has_a_run_sh():
    assert {path.parts[1] for path in SCRIPTS if path.name == "run.sh"} == {
        "audio_tagging",
        "sound_classification",
        "speaker_verification",
    }


@pytest.mark.parametrize("script", [s for s in SCRIPTS if str(s) not in SOURCED], ids=str)
def test_script_is_executable(script):
    assert os.access(REPO / script, os.X_OK), f"{script}: chmod +x (git update-index --chmod=+x)"
