"""The audio-tagging demo's models, as the README's stand-in command builds them: its teacher must
be the larger model (distilling a 20k-parameter teacher into a 36k-parameter student demonstrates
nothing), with the overrides the command passes through run.sh."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from conftest import AUDIO_TAGGING

from kd_modules.hparams import load_composed, parse_recipe_arguments

HP = AUDIO_TAGGING / "hparams"
N_OUTPUTS = 37  # the SONYC-UST layout: 29 fine columns + 8 coarse classes


def demo_options() -> dict[str, str]:
    """run.sh's options in the README's stand-in demo command (option -> value)."""
    readme = (AUDIO_TAGGING / "README.md").read_text()
    command = re.search(r"```\n(\./run\.sh --standin true .*?)\n```", readme, re.DOTALL)
    assert command, "no './run.sh --standin true' command in the README"
    words = shlex.split(command.group(1).replace("\\\n", " "))[1:]
    return {key.removeprefix("--"): value for key, value in zip(words[::2], words[1::2])}


def parameters(arch: str, extra: str, tmp_path: Path) -> int:
    """Parameters of ``hparams/<arch>.yaml``'s model composed as run.sh composes a run's."""
    argv = [
        str(HP / "common.yaml"),
        str(HP / f"{arch}.yaml"),
        str(HP / "kd" / "none.yaml"),
        "--data_folder",
        str(tmp_path),
        "--output_folder",
        str(tmp_path / arch),
        "--n_outputs",
        str(N_OUTPUTS),
        "--exp_root",
        str(tmp_path),
        *shlex.split(extra),
    ]
    files, _, overrides = parse_recipe_arguments(argv)
    model = load_composed(files, overrides)["model"]
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("student", demo_options()["students"].split())
def test_the_demo_teacher_is_larger_than_its_students(student: str, tmp_path: Path):
    options = demo_options()
    extra = options.get("extra_args", "")
    teacher = parameters("teacher/cnn10", f"{extra} {options.get('teacher_args', '')}", tmp_path)
    assert teacher > parameters(f"student/{student}", extra, tmp_path)
