"""What the stage helpers ask before launching a process (kd_modules.stages.status): a method's
kind, a top-level YAML value, whether a stage is done (its record against every input it read);
and stage 3's plan (kd_modules.stages.cache_plan): the methods that share one teacher cache."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, SPEAKER_VERIFICATION, write_fsdd_manifests

from kd_modules.data_info import DATA_INFO, data_info
from kd_modules.hparams import load_composed, parse_recipe_arguments
from kd_modules.stages.cache_plan import cache_groups
from kd_modules.stages.status import method_kind, not_done_reason, record_done, yaml_value
from kd_modules.teacher import Teacher, as_composed, teacher_cache_folder

SOUND = REPO / "recipes" / "sound_classification"


def status(*args: str, cwd: Path = SOUND) -> subprocess.CompletedProcess:
    """``python -m kd_modules.stages.status ARGS`` as run.sh runs it."""
    return subprocess.run(
        [sys.executable, "-m", "kd_modules.stages.status", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )


# ----- kinds and values --------------------------------------------------------------------------
def test_a_method_is_datafree_when_its_yaml_names_a_synthesiser():
    methods = sorted(path.stem for path in (SOUND / "hparams" / "kd").glob("*.yaml"))
    named = {
        path.stem: match.group(1)
        for path in (SOUND / "hparams" / "kd").glob("*.yaml")
        if (match := re.search(r"^synthesis: *(\w+)", path.read_text(), re.M))
    }
    assert named and all(
        (SOUND / "hparams" / "synthesis" / f"{n}.yaml").is_file() for n in named.values()
    )
    kinds = {m: method_kind(SOUND / "hparams" / "kd" / f"{m}.yaml") for m in methods}
    assert {m for m, kind in kinds.items() if kind == "datafree"} == set(named)
    for kind in ("kd", "datafree"):
        proc = status("methods", kind, "hparams/kd", *methods)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == [m for m in methods if kinds[m] == kind]


def test_value_is_the_top_level_key_hyperpyyaml_resolves():
    hparams = SPEAKER_VERIFICATION / "hparams"
    teacher = hparams / "teacher" / "ecapa_tiny.yaml"
    loaded = load_composed(  # the teacher's run composes it so
        [hparams / "common.yaml", teacher, hparams / "kd" / "none.yaml"],
        {"data_folder": "d", "output_folder": "o", "n_speakers": 4},
    )
    assert yaml_value(teacher, "embedding_dim") == loaded["embedding_dim"]
    proc = status("value", str(teacher), "embedding_dim")
    assert proc.stdout.strip() == str(loaded["embedding_dim"])
    assert status("value", "hparams/kd/kd.yaml", "synthesis").stdout == "\n"  # no such key


def test_value_is_never_a_nested_key(tmp_path: Path):
    (tmp_path / "a.yaml").write_text("model: !new:torch.nn.Linear\n    embedding_dim: 512\n")
    assert yaml_value(tmp_path / "a.yaml", "embedding_dim") is None


# ----- stage records -----------------------------------------------------------------------------
@pytest.fixture
def stage(tmp_path: Path, monkeypatch) -> dict:
    """A finished run of ``train.py`` in a recipe-like folder: its YAML, prepared data with a
    data_info.json, a finished teacher, the command and its stamp."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hparams").mkdir()
    (tmp_path / "hparams" / "kd.yaml").write_text("tau: 4.0\n")
    data = write_fsdd_manifests(tmp_path / "data", {"train": 1, "valid": 1, "test": 1})
    (data / ".done").write_text("{}")
    files = ["train.json", "valid.json", "test.json", ".done"]
    (data / DATA_INFO).write_text(json.dumps(data_info(data, "fsdd", 10, files)))
    teacher, run = tmp_path / "teacher", tmp_path / "run"
    for folder in (teacher, run):
        folder.mkdir()
        (folder / "train_info.json").write_text(json.dumps({"finished": True}))
    command = [
        "train.py",
        "hparams/kd.yaml",
        "--data_folder",
        str(data),
        "--teacher_folder",
        str(teacher),
        "--output_folder",
        str(run),
    ]
    return {
        "data": data / DATA_INFO,
        "teacher": teacher,
        "run": run,
        "command": command,
        "stamp": run / "stage_record.json",
        "folder": tmp_path,
    }


def recorded(stage: dict) -> None:
    assert record_done(stage["stamp"], stage["command"], stage["data"], stage["run"]) is None


def test_a_recorded_stage_is_done_until_an_input_changes(stage: dict):
    stamp, command, data = stage["stamp"], stage["command"], stage["data"]
    assert not_done_reason(stamp, command, data) == "no record of a finished run of this command"
    recorded(stage)
    assert not_done_reason(stamp, command, data) is None
    changes = [  # (file, what changes) -> the reason names the file
        (stage["folder"] / "hparams" / "kd.yaml", "tau: 2.0\n"),
        (data.parent / "train.json", "{}"),
        (data.parent / ".done", '{"seed": 2}'),
        (stage["teacher"] / "train_info.json", '{"finished": false}'),
        (stage["run"] / "train_info.json", '{"finished": true, "epochs": 3}'),
    ]
    for path, text in changes:
        before = path.read_text()
        path.write_text(text)
        assert not_done_reason(stamp, command, data) == f"{path.resolve()} changed since"
        path.write_text(before)
        assert not_done_reason(stamp, command, data) is None


def test_another_command_or_a_deleted_file_is_not_done(stage: dict):
    recorded(stage)
    stamp, command, data = stage["stamp"], stage["command"], stage["data"]
    longer = [*command, "--number_of_epochs", "2"]
    assert not_done_reason(stamp, longer, data) == "recorded for another command"
    (data.parent / "valid.json").unlink()
    assert not_done_reason(stamp, command, data).endswith("valid.json is missing")


def test_an_unfinished_run_is_not_recorded(stage: dict):
    (stage["run"] / "train_info.json").write_text(json.dumps({"finished": False}))
    reason = record_done(stage["stamp"], stage["command"], stage["data"], stage["run"])
    assert reason == f"{stage['run'] / 'train_info.json'} does not say finished"
    assert not stage["stamp"].exists()


def test_the_command_line_answers_with_its_exit_status(stage: dict):
    command, folder = stage["command"], stage["folder"]
    question = ["done", str(stage["stamp"]), "--data", str(stage["data"]), "--", *command]
    first = status(*question, cwd=folder)
    assert (
        first.returncode == 1
        and first.stdout.strip() == "no record of a finished run of this command"
    )
    record = [
        "record",
        str(stage["stamp"]),
        "--data",
        str(stage["data"]),
        "--trained",
        str(stage["run"]),
        "--",
        *command,
    ]
    assert status(*record, cwd=folder).returncode == 0
    assert status(*question, cwd=folder).returncode == 0


# ----- stage 3's plan ----------------------------------------------------------------------------
def real_cache_folder(argv: list[str], teacher: Teacher) -> str:
    """The cache folder of one method for a loaded teacher, as stage 3 computes it."""
    files, _, overrides = parse_recipe_arguments(argv)
    hparams = load_composed(files, overrides)
    return str(teacher_cache_folder(hparams, as_composed(teacher, hparams)))


@pytest.mark.parametrize(
    ("recipe", "student", "methods", "overrides"),
    [
        (SOUND, "xvector_small", ["kd", "fitnets", "sp"], {"n_classes": 10}),
        (
            SPEAKER_VERIFICATION,
            "ecapa_tiny",
            ["kd", "embedding_cosine", "mlkd", "imlkd", "imlkd_1s", "imlkd_raw"],
            {"n_speakers": 10, "teacher_embedding_dim": 64},
        ),
    ],
)
def test_methods_share_a_cache_exactly_when_their_cache_folders_agree(
    tmp_path, recipe, student, methods, overrides
):
    """The plan's groups are those of the cache folders stage 3 computes for a real teacher (the
    recipe's own architecture, untrained), whatever the fingerprint it leaves out."""
    data = write_fsdd_manifests(tmp_path / "data", {"train": 1, "valid": 1, "test": 1})
    args = [
        "--data_folder",
        str(data),
        "--teacher_folder",
        str(tmp_path),
        "--output_folder",
        str(tmp_path / "run"),
        "--exp_root",
        str(tmp_path / "exp"),
    ]
    args += [arg for key, value in overrides.items() for arg in (f"--{key}", str(value))]
    hparams = recipe / "hparams"
    template = [
        str(hparams / "common.yaml"),
        str(hparams / "student" / f"{student}.yaml"),
        str(hparams / "kd" / "{method}.yaml"),
        *args,
    ]
    groups = cache_groups(methods, template)
    assert sorted(method for group in groups for method in group) == sorted(methods)
    architecture = [hparams / "common.yaml", hparams / "student" / f"{student}.yaml"]
    teacher_hparams = load_composed(
        [*architecture, hparams / "kd" / "none.yaml"],
        {"data_folder": str(data), "output_folder": str(tmp_path), **overrides},
    )
    teacher = Teacher(teacher_hparams["model"])
    folders = {
        m: real_cache_folder([a.replace("{method}", m) for a in template], teacher) for m in methods
    }
    assert len(groups) == len(set(folders.values())) > 1
    for group in groups:
        assert len({folders[method] for method in group}) == 1, group
