"""run.sh's option checks, --help and messages, without training (about 1-2 s per call).

Bad options stop ``run.sh`` before any stage with one line on stderr naming the option and what is
allowed. Where a test needs the commands run.sh builds, ``--python`` is a stub that records them
(and runs the real interpreter only for ``-c`` snippets); one short real training run checks that
SpeechBrain's torchvision warning no longer reaches the log.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RECIPE, REPO, run_recipe, write_fsdd_manifests

from kd_modules.cache import check_deterministic_inputs
from kd_modules.data_info import DATA_INFO, data_info
from kd_modules.outputs import EXPORT_BLOCK, file_sha256
from kd_modules.results import REQUIRED_FIELDS, write_results

RUN_SH = RECIPE / "run.sh"


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"


def folders(tmp_path: Path) -> list[str]:
    return ["--data_dir", str(tmp_path / "data"), "--exp_dir", str(tmp_path / "exp")]


def available(kind: str) -> str:
    """The names run.sh lists for --methods/--students/--teacher: hparams/<kind>/*.yaml."""
    return " ".join(sorted(path.stem for path in (RECIPE / "hparams" / kind).glob("*.yaml")))


def refused(proc: subprocess.CompletedProcess) -> str:
    """The one-line error of a run.sh that stopped before any stage."""
    assert proc.returncode != 0, explain(proc)
    assert proc.stdout == "", explain(proc)  # no stage ran, nothing was logged
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, explain(proc)
    return lines[0]


# ----- item 8: numeric and enumerated options ---------------------------------------------------
@pytest.mark.parametrize(
    ("option", "value", "allowed"),
    [
        ("stage", "two", "an integer from 0 to 9"),
        ("stop_stage", "10", "an integer from 0 to 9"),
        ("teacher_seed", "-1", "an integer >= 0"),
        ("seeds", "1,2", '1 or more integers separated by spaces, e.g. "1 2 3"'),
        ("seeds", "", '1 or more integers separated by spaces, e.g. "1 2 3"'),
        ("folds", "one", 'integers separated by spaces, e.g. "1 2 3"'),
        ("ngpu", "0", "an integer >= 1"),
        ("sample_rate", "16k", "an integer >= 1"),
        ("dataset", "esc10", "esc50|urbansound8k|audiomnist|fsdd"),
        ("split", "random", "official|seeded"),
        ("device", "gpu", "auto|cpu|cuda|cuda:N"),
        ("use_cache", "yes", "true|false"),
        ("allow_unfinished_teacher", "1", "true|false"),
        ("convert", "ffmpeg", "auto|sox|soundfile|none"),
        ("nj", "-1", "an integer >= 0"),
        ("download", "True", "true|false"),
        ("update_readme", "no", "true|false"),
        ("quantize", "yes", "true|false"),
        ("export_teacher", "1", "true|false"),
        ("tensorboard", "on", "true|false"),
    ],
)
def test_invalid_value_is_refused_before_any_stage(tmp_path, option, value, allowed):
    proc = run_recipe(RECIPE, f"--{option}", value, *folders(tmp_path), check=False)
    assert refused(proc) == f"run.sh: invalid --{option} '{value}' (allowed: {allowed})"
    assert not (tmp_path / "data").exists() and not (tmp_path / "exp").exists()


def test_stage_after_stop_stage_is_refused(tmp_path):
    proc = run_recipe(RECIPE, "--stage", "5", "--stop_stage", "3", *folders(tmp_path), check=False)
    expected = "run.sh: invalid --stage 5 after --stop_stage 3 (allowed: --stage <= --stop_stage)"
    assert refused(proc) == expected


# ----- item 9: every named YAML exists, checked before any stage -------------------------------
@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("methods", "kd kdd", "'kdd': hparams/kd/kdd.yaml not found (available: {kd})"),
        (
            "students",
            "xvector_smal",
            "'xvector_smal': hparams/student/xvector_smal.yaml not found (available: {student})",
        ),
        (
            "teacher",
            "xvector",
            "'xvector': hparams/teacher/xvector.yaml not found (available: {teacher})",
        ),
        ("students", "", "'': give at least one name (available: {student})"),
        (
            "teacher",
            "xvector_large xvector_large",
            "'xvector_large xvector_large': give exactly one name (available: {teacher})",
        ),
    ],
)
def test_unknown_yaml_name_is_refused_even_from_a_later_stage(tmp_path, option, value, message):
    names = {kind: available(kind) for kind in ("kd", "student", "teacher")}
    proc = run_recipe(RECIPE, "--stage", "5", f"--{option}", value, *folders(tmp_path), check=False)
    assert refused(proc) == f"run.sh: invalid --{option} {message.format(**names)}"


# ----- item 12: --exp_dir / --data_dir can be created and written -----------------------------
@pytest.mark.parametrize("option", ["exp_dir", "data_dir"])
def test_unwritable_folder_is_refused_at_stage_0(tmp_path, option):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    good = {"exp_dir": tmp_path / "exp", "data_dir": tmp_path / "data"}
    good[option] = blocker / "sub"
    args = [arg for name, path in good.items() for arg in (f"--{name}", str(path))]
    proc = run_recipe(RECIPE, "--stop_stage", "0", "--device", "cpu", *args, check=False)
    expected = (
        f"run.sh: --{option} {blocker}/sub cannot be created or written "
        f"({blocker} is not a writable folder)"
    )
    assert refused(proc) == expected


@pytest.mark.slow
def test_stage_0_alone_checks_folders_without_creating_them(tmp_path):
    proc = run_recipe(
        RECIPE,
        "--python",
        sys.executable,
        "--stop_stage",
        "0",
        "--device",
        "cpu",
        "--data_dir",
        str(tmp_path / "new" / "data"),
        "--exp_dir",
        str(tmp_path / "new" / "exp"),
    )
    assert proc.stdout.rstrip().endswith("[run.sh] done")
    assert list(tmp_path.iterdir()) == []  # nothing created, no probe left behind


# ----- item 13: --help ---------------------------------------------------------------------------
def declared_options() -> dict[str, tuple[str, str]]:
    """name -> (default, meaning) from the ``name=default  # meaning`` lines of run.sh and of the
    shared KD options it sources (tools/kd_options.sh, whose names ``$kd_options`` stands for)."""
    shared = (REPO / "tools" / "kd_options.sh").read_text()
    kd_options = re.search(r'^kd_options="([^"]*)"', shared, re.M)[1]
    text = RUN_SH.read_text() + "\n" + shared
    names = re.search(r'^options="([^"]*)"', text, re.M)[1]
    names = names.replace("$kd_options", kd_options).split()
    declared = {}
    for name in names:
        line = re.search(rf"^{name}=(.*?)\s+#\s*(.*)$", text, re.M)
        assert line, f"run.sh documents no meaning for {name}"
        declared[name] = (line[1].strip('"'), line[2])
    return declared


def help_lines(proc: subprocess.CompletedProcess) -> dict[str, list[str]]:
    rows = re.findall(r'^  --(\S+) +("[^"]*"|\S+) +(.*)$', proc.stdout, re.M)
    return {name: [value, meaning] for name, value, meaning in rows}


def test_help_gives_every_option_its_value_and_meaning():
    declared = declared_options()
    lines = help_lines(run_recipe(RECIPE, "--help"))
    assert list(lines) == list(declared)
    for name, (default, meaning) in declared.items():
        shown = f'"{default}"' if not default or " " in default else default
        assert lines[name] == [shown, meaning], name
    assert lines["split"] == [
        "official",
        "official | seeded (a seeded grouped split, for partial copies)",
    ]
    assert lines["use_cache"] == ["true", "true | false: KD students read stage 3's teacher cache"]
    assert "--cache_shard_seconds" in lines["kd_args"][1]  # how a user sizes stage 3's shards


def test_help_shows_values_given_before_it():
    lines = help_lines(run_recipe(RECIPE, "--dataset", "esc50", "--seeds", "1 2 3", "--help"))
    assert lines["dataset"][0] == "esc50" and lines["seeds"][0] == '"1 2 3"'


def test_help_is_generic_for_any_script_sourcing_parse_options(tmp_path):
    script = tmp_path / "recipe" / "run.sh"
    script.parent.mkdir()
    script.write_text(
        "#!/usr/bin/env bash\n"
        'cd "$(dirname "$0")"\n'
        "alpha=1        # the first letter (an integer)\n"
        'beta="b c"     # two words\n'
        "gamma=x\n"
        'options="alpha beta gamma"\n'
        'help_message="Usage: tiny"\n'
        f'. "{REPO}/tools/parse_options.sh"\n'
    )
    proc = run_recipe(tmp_path, "--help", program=["bash", "recipe/run.sh"])  # a relative path
    assert proc.stdout.splitlines() == [
        "Usage: tiny",
        "Options (current value, then meaning and allowed values):",
        "  --alpha 1                the first letter (an integer)",
        '  --beta  "b c"            two words',
        "  --gamma x",
    ]


# ----- commands run.sh builds: a recording --python ----------------------------------------------
@pytest.fixture
def recorder(tmp_path: Path) -> tuple[Path, Path]:
    """A --python that logs each command (one line of arguments) but runs ``-c`` snippets and
    what the stage helpers ask before launching (``-m kd_modules.stages.status``: a method's kind,
    is a run trained / evaluated; ``-m kd_modules.stages.cache_plan``: stage 3's caches)."""
    log = tmp_path / "commands.log"
    stub = tmp_path / "python"
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


def prepared(
    tmp_path: Path, dataset: str, split: str, folds: list[int], clips: dict | None = None
) -> Path:
    """What stage 1 leaves for later stages: each fold's manifests (``clips`` real FSDD clips per
    digit and split, default 1), labels.json, .done (its arguments) and data_info.json (the facts
    run.sh reads); returns the data folder."""
    out = tmp_path / "data" / dataset
    classes = [str(digit) for digit in range(10)]
    files = ["labels.json", ".done"]
    for fold in folds:
        write_fsdd_manifests(out / f"fold{fold}", clips or {"train": 1, "valid": 1, "test": 1})
        files += [f"fold{fold}/{split}.json" for split in ("train", "valid", "test")]
    (out / "labels.json").write_text(json.dumps(classes))
    (out / ".done").write_text(json.dumps({"dataset": dataset, "split": split, "folds": folds}))
    info = data_info(out, dataset, len(classes), files, classes=classes, split=split, folds=folds)
    (out / DATA_INFO).write_text(json.dumps(info))
    return out


def commands(log: Path, script: str) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.split()[0] == script]


@pytest.mark.parametrize("allow", ["true", "false"])
def test_allow_unfinished_teacher_reaches_stages_3_and_5_only(tmp_path, recorder, allow):
    stub, log = recorder
    prepared(tmp_path, "fsdd", "seeded", [1])
    run_recipe(
        RECIPE,
        "--python",
        str(stub),
        "--stage",
        "2",
        "--stop_stage",
        "5",
        "--device",
        "cpu",
        "--allow_unfinished_teacher",
        allow,
        *folders(tmp_path),
    )
    flag = "--allow_unfinished_teacher True"
    cache_runs = commands(log, "cache_teacher.py")
    teacher, alone, *kd_students = commands(log, "train.py")
    assert len(cache_runs) == len(kd_students) == 3  # kd, fitnets, sp
    assert "--role teacher" in teacher and flag not in teacher and flag not in alone
    assert all((flag in command) == (allow == "true") for command in cache_runs + kd_students)


def test_kd_args_reach_the_kd_students_cache_training_and_evaluation_only(tmp_path, recorder):
    """--kd_args "--tau 2": a key the student alone (kd/none.yaml) lacks must not reach it."""
    stub, log = recorder
    prepared(tmp_path, "fsdd", "seeded", [1])
    common = [
        "--python",
        str(stub),
        "--device",
        "cpu",
        "--methods",
        "kd",
        "--kd_args",
        "--tau 2",
        "--teacher",
        "xvector_large",
        *folders(tmp_path),
    ]
    run_recipe(RECIPE, *common, "--stage", "2", "--stop_stage", "5")
    (cache_run,) = commands(log, "cache_teacher.py")
    teacher, alone, kd_student = commands(log, "train.py")
    assert "--tau 2" in cache_run and "--tau 2" in kd_student
    assert "--tau 2" not in teacher and "--tau 2" not in alone
    runs = tmp_path / "exp" / "fsdd" / "fold1"
    for folder in (
        "teacher/xvector_large/none",
        "student/xvector_small/none",
        "student/xvector_small/kd",
    ):
        (runs / folder / "seed1").mkdir(parents=True, exist_ok=True)  # stage 3 composed the YAML
        (runs / folder / "seed1" / "train_info.json").write_text("{}")
    log.unlink()
    run_recipe(RECIPE, *common, "--stage", "7", "--stop_stage", "7")
    evaluations = {
        line.split("--output_folder ")[1].split()[0]: line for line in commands(log, "train.py")
    }
    assert len(evaluations) == 3 and all("--test_only" in line for line in evaluations.values())
    assert "--tau 2" in evaluations[str(runs / "student/xvector_small/kd/seed1")]
    assert "--tau 2" not in evaluations[str(runs / "student/xvector_small/none/seed1")]
    assert "--tau 2" not in evaluations[str(runs / "teacher/xvector_large/none/seed1")]


def test_report_title_names_the_prepared_split(tmp_path, recorder):
    """Item 20: data prepared seeded, stage 8 run by a command that says nothing of the split."""
    stub, log = recorder
    prepared(tmp_path, "esc50", "seeded", [1])
    run_recipe(
        RECIPE,
        "--python",
        str(stub),
        "--dataset",
        "esc50",
        "--stage",
        "8",
        "--device",
        "cpu",
        *folders(tmp_path),
    )
    (report,) = commands(log, "local/report.py")  # the library's table + the data-free rows
    assert "--title Sound classification: esc50 (seeded split, folds 1, seeds 1)" in report


def test_later_stages_run_the_prepared_folds(tmp_path, recorder):
    """Started at stage 2 on seeded ESC-50 data, run.sh trains fold 1 only (not folds 1-5)."""
    stub, log = recorder
    prepared(tmp_path, "esc50", "seeded", [1])
    run_recipe(
        RECIPE,
        "--python",
        str(stub),
        "--dataset",
        "esc50",
        "--stage",
        "2",
        "--stop_stage",
        "2",
        "--device",
        "cpu",
        *folders(tmp_path),
    )
    (teacher,) = commands(log, "train.py")
    assert f"--data_folder {tmp_path}/data/esc50/fold1 " in teacher


# ----- items 10 and 14: real train.py runs through run.sh ----------------------------------------
def tiny_dataset(tmp_path: Path) -> None:
    """20 real FSDD clips for training, 10 for validation and test: a training stage in seconds."""
    prepared(tmp_path, "fsdd", "seeded", [1], {"train": 2, "valid": 1, "test": 1})


@pytest.mark.slow
def test_misspelt_override_is_one_line_naming_the_closest_keys(tmp_path):
    tiny_dataset(tmp_path)
    proc = run_recipe(
        RECIPE,
        "--python",
        sys.executable,
        "--stage",
        "4",
        "--stop_stage",
        "4",
        "--device",
        "cpu",
        "--extra_args",
        "--numbr_of_epochs 2",
        *folders(tmp_path),
        check=False,
    )
    assert proc.returncode == 2, explain(proc)
    assert proc.stderr.strip().splitlines()[-1] == (
        "train.py: unknown hyperparameter --numbr_of_epochs (closest valid names: number_of_epochs)"
    )
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_wrong_type_override_names_the_key_and_value(tmp_path):
    tiny_dataset(tmp_path)
    proc = run_recipe(
        RECIPE,
        "--python",
        sys.executable,
        "--stage",
        "4",
        "--stop_stage",
        "4",
        "--device",
        "cpu",
        "--extra_args",
        "--number_of_epochs two",
        *folders(tmp_path),
        check=False,
    )
    assert proc.returncode == 2, explain(proc)
    assert proc.stderr.strip().splitlines()[-1] == (
        "train.py: invalid hyperparameter --number_of_epochs 'two': expected an integer "
        "(its YAML default is 15)"
    )
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_training_log_has_no_torchvision_warning(tmp_path):
    """Item 14: SpeechBrain's import-time torchvision warning is filtered (matplotlib draws)."""
    tiny_dataset(tmp_path)
    proc = run_recipe(
        RECIPE,
        "--python",
        sys.executable,
        "--stage",
        "4",
        "--stop_stage",
        "4",
        "--methods",
        "",
        "--device",
        "cpu",
        "--extra_args",
        "--number_of_epochs 1 --num_workers 0",
        *folders(tmp_path),
    )
    run = tmp_path / "exp" / "fsdd" / "fold1" / "student" / "xvector_small" / "none" / "seed1"
    assert (run / "train_info.json").is_file()
    assert "torchvision" not in proc.stdout + proc.stderr
    assert "torchvision" not in (run / "log.txt").read_text()


# ----- item 11: the cache refusal names run.sh's option and the YAML key ------------------------
def test_cache_refusal_names_the_run_sh_option_and_the_yaml_key():
    with pytest.raises(ValueError) as refusal:
        check_deterministic_inputs({"train_random_crop": False, "augment": True})
    assert str(refusal.value) == (
        "The teacher cache cannot be used with random input transforms {'augment': True}: cached "
        "outputs were computed on the unmodified clips. Run the teacher live instead (run.sh: "
        "--use_cache false; train.py: --use_teacher_cache False, the YAML key use_teacher_cache) "
        "or turn these settings off."
    )


@pytest.mark.parametrize("recipe", ["sound_classification", "audio_tagging"])
@pytest.mark.slow
def test_stop_after_prepare_runs_no_later_stage(tmp_path, recipe):
    """--stop_stage 1 prepares and stops: no later stage reads the (not yet known) label count."""
    folder = REPO / "recipes" / recipe
    data = {
        "sound_classification": [
            "--dataset",
            "fsdd",
            "--split",
            "seeded",
            "--data_root",
            str(REPO / "tests/samples/fsdd/free-spoken-digit-dataset"),
        ],
        "audio_tagging": ["--standin", "true"],
    }[recipe]
    proc = run_recipe(
        folder,
        "--python",
        sys.executable,
        "--device",
        "cpu",
        "--stop_stage",
        "1",
        *data,
        *folders(tmp_path),
    )
    assert "unbound variable" not in proc.stderr, explain(proc)
    assert not re.search(r"stage [2-8]:", proc.stdout), explain(proc)
    assert proc.stdout.rstrip().endswith("done"), explain(proc)


@pytest.mark.slow
def test_standin_sources_reach_make_standin(tmp_path, recorder):
    """Issue 16 item 10: the options make_standin.py's message names work through run.sh, and
    are refused without --standin true."""
    stub, log = recorder
    folder = REPO / "recipes" / "speaker_verification"
    (tmp_path / "data" / "standin").mkdir(parents=True)  # what the recorded make_standin writes
    sources = [
        "--standin_librispeech",
        str(tmp_path / "libri"),
        "--standin_vctk",
        str(tmp_path / "vctk wavs"),
    ]
    run_recipe(
        folder,
        "--python",
        str(stub),
        "--standin",
        "true",
        "--stop_stage",
        "1",
        *sources,
        *folders(tmp_path),
    )
    (command,) = commands(log, "local/make_standin.py")
    assert command == (
        f"local/make_standin.py --out {tmp_path}/data/standin --librispeech {tmp_path}/libri "
        f"--vctk {tmp_path}/vctk wavs"
    )
    proc = run_recipe(folder, "--python", str(stub), *sources, *folders(tmp_path), check=False)
    assert refused(proc).endswith(
        "--standin_librispeech / --standin_vctk are the sources of --standin true: give it too"
    )


# ----- issue 16 item 15: each dataset's default teacher ------------------------------------------
def teacher_command(tmp_path: Path, recorder, *extra: str) -> str:
    """The stage-2 command run.sh builds for FSDD, with ``extra`` options."""
    stub, log = recorder
    if not (tmp_path / "data" / "fsdd").exists():
        prepared(tmp_path, "fsdd", "seeded", [1])
    log.unlink(missing_ok=True)
    run_recipe(
        RECIPE,
        "--python",
        str(stub),
        "--stage",
        "2",
        "--stop_stage",
        "2",
        "--device",
        "cpu",
        *folders(tmp_path),
        *extra,
    )
    (teacher,) = commands(log, "train.py")
    return teacher


def test_fsdd_defaults_to_the_cnn_teacher_trained_30_epochs(tmp_path, recorder):
    teacher = teacher_command(tmp_path, recorder)
    assert "hparams/teacher/cnn.yaml" in teacher and "/teacher/cnn/none/seed1" in teacher
    assert teacher.endswith("--number_of_epochs 30")


def test_epochs_given_by_the_user_win_over_the_default_teachers(tmp_path, recorder):
    """--extra_args' number_of_epochs is not overridden by the default (which would come later and
    win); --teacher_args keep their own; a teacher chosen by name gets no default epochs."""
    extra = teacher_command(tmp_path, recorder, "--extra_args", "--number_of_epochs 2")
    assert "hparams/teacher/cnn.yaml" in extra and "--number_of_epochs 30" not in extra
    own = teacher_command(tmp_path, recorder, "--teacher_args", "--lr 0.001")
    assert own.endswith("--number_of_epochs 30 --lr 0.001")
    named = teacher_command(tmp_path, recorder, "--teacher", "xvector_large")
    assert "hparams/teacher/xvector_large.yaml" in named and "--number_of_epochs" not in named


@pytest.mark.parametrize("dataset", ["esc50", "urbansound8k", "audiomnist", "fsdd"])
def test_every_dataset_has_a_default_teacher_that_exists(tmp_path, recorder, dataset):
    stub, log = recorder
    prepared(tmp_path, dataset, "seeded", [1])
    run_recipe(
        RECIPE,
        "--python",
        str(stub),
        "--dataset",
        dataset,
        "--stage",
        "2",
        "--stop_stage",
        "2",
        "--device",
        "cpu",
        *folders(tmp_path),
    )
    (teacher,) = commands(log, "train.py")
    arch = re.search(r"hparams/teacher/(\w+)\.yaml", teacher).group(1)
    assert (RECIPE / "hparams" / "teacher" / f"{arch}.yaml").is_file()
    # the measured choices (README.md, "Default teachers"): each beats the student alone
    assert arch == {"fsdd": "cnn", "urbansound8k": "ensemble"}.get(dataset, "xvector_large")
    assert re.search(r"--number_of_epochs [1-9][0-9]*$", teacher)


# ----- issue 15: stage 1's facts, finished runs not launched, one stage-3 process per cache -----
SPEAKER = REPO / "recipes" / "speaker_verification"


def speaker_data(tmp_path: Path) -> Path:
    """Prepared speaker-verification data as later stages read it: manifests (real FSDD clips)
    and data_info.json (4 training speakers)."""
    splits = {"train": 1, "valid": 1, "test": 1}
    data = write_fsdd_manifests(tmp_path / "data" / "voxceleb1", splits)
    files = [f"{split}.json" for split in splits]
    (data / DATA_INFO).write_text(json.dumps(data_info(data, "voxceleb1", 4, files)))
    return data


def test_later_stages_read_the_facts_of_data_info_alone(tmp_path, recorder):
    """The class count and the prepared folds come from data_info.json, not from labels.json,
    .done or a table of official folds in run.sh."""
    stub, log = recorder
    data = prepared(tmp_path, "esc50", "official", [3])
    (data / "labels.json").unlink()
    (data / ".done").unlink()
    run_recipe(
        RECIPE,
        "--python",
        str(stub),
        "--dataset",
        "esc50",
        "--stage",
        "2",
        "--stop_stage",
        "2",
        "--device",
        "cpu",
        *folders(tmp_path),
    )
    (teacher,) = commands(log, "train.py")
    assert f"--data_folder {data}/fold3 " in teacher and " --n_classes 10 " in teacher


def test_speaker_verification_stage_7_runs_train_py_test_only(tmp_path, recorder):
    """Stage 7 verifies each run with train.py --test_only, as the other recipes evaluate."""
    stub, log = recorder
    speaker_data(tmp_path)
    exp = tmp_path / "exp" / "voxceleb1"
    runs = [
        exp / "teacher/ecapa_tiny/none/seed1",
        exp / "student/ecapa_tiny/none/seed1",
        exp / "student/ecapa_tiny/kd/seed1",
    ]
    for run in runs:
        run.mkdir(parents=True)
        (run / "train_info.json").write_text("{}")
    run_recipe(
        SPEAKER,
        "--python",
        str(stub),
        "--stage",
        "7",
        "--stop_stage",
        "7",
        "--teacher",
        "ecapa_tiny",
        "--students",
        "ecapa_tiny",
        "--methods",
        "kd",
        "--device",
        "cpu",
        *folders(tmp_path),
    )
    evaluations = commands(log, "train.py")
    assert sorted(line.split("--output_folder ")[1].split()[0] for line in evaluations) == sorted(
        map(str, runs)
    )
    assert all(line.endswith("--test_only") and " --n_speakers 4 " in line for line in evaluations)


def test_a_finished_run_is_not_launched_again_for_the_same_command(tmp_path, recorder):
    """Stage 2 of the same command on a finished teacher starts no process: its stage record
    names the command and the checksum of every input; changed data or another command launch
    train.py again (which resumes or finds nothing to do, as before)."""
    stub, log = recorder
    data = prepared(tmp_path, "fsdd", "seeded", [1])
    teacher = tmp_path / "exp" / "fsdd" / "fold1" / "teacher" / "cnn" / "none" / "seed1"
    args = [
        "--python",
        str(stub),
        "--stage",
        "2",
        "--stop_stage",
        "2",
        "--device",
        "cpu",
        *folders(tmp_path),
    ]

    def launches(*extra: str) -> tuple[int, str]:
        log.write_text("")
        proc = run_recipe(RECIPE, *args, *extra)
        return len(commands(log, "train.py")), proc.stdout

    assert launches()[0] == 1  # no record (and the stub trains nothing: no record after it)
    teacher.mkdir(parents=True)
    (teacher / "train_info.json").write_text(json.dumps({"finished": True}))
    assert launches()[0] == 1  # finished now: recorded after this launch
    count, stdout = launches()
    assert count == 0 and f"stage 2: {teacher} already trained by this command" in stdout
    (data / "fold1" / "train.json").write_text(json.dumps({}))
    assert launches()[0] == 1  # another manifest
    assert launches()[0] == 0
    assert launches("--teacher_args", "--lr 0.01")[0] == 1  # another command


def test_stage_3_runs_one_process_per_distinct_teacher_cache(tmp_path, recorder):
    """Logit, embedding and multi-level KD read one cache of the raw teacher: one cache_teacher.py
    builds it; each IML-KD variant has a cache of its own (kd_modules.stages.cache_plan)."""
    stub, log = recorder
    speaker_data(tmp_path)
    run_recipe(
        SPEAKER,
        "--python",
        str(stub),
        "--stage",
        "3",
        "--stop_stage",
        "3",
        "--teacher",
        "ecapa_tiny",
        "--students",
        "ecapa_tiny",
        "--methods",
        "kd embedding_cosine mlkd imlkd imlkd_1s",
        "--device",
        "cpu",
        *folders(tmp_path),
    )
    runs = commands(log, "cache_teacher.py")
    assert [re.search(r"hparams/kd/(\w+)\.yaml", run).group(1) for run in runs] == [
        "kd",
        "imlkd",
        "imlkd_1s",
    ]


# ----- issue 17: stage 9 (export) and --tensorboard ----------------------------------------------
def evaluated_run(folder: Path, exported_roles: tuple[str, ...] = ()) -> Path:
    """A run folder as stage 7 leaves it (train_info.json older than results.json), exported by
    stage 9 when ``exported_roles`` names its files (results.json's export block)."""
    folder.mkdir(parents=True)
    (folder / "train_info.json").write_text("{}")
    os.utime(folder / "train_info.json", (1e9, 1e9))
    results = {name: None for name in REQUIRED_FIELDS}
    results.update(metrics={"accuracy": 0.5}, checkpoint=str(folder / "save" / "CKPT+1"))
    files = {}
    for role in exported_roles:
        name = {"onnx": "model.onnx", "onnx_int8": "model.int8.onnx"}.get(role, "export.json")
        (folder / name).write_text(f"{role}\n")
        files[role] = {"name": name, "sha256": file_sha256(folder / name)}
    if files:
        results[EXPORT_BLOCK] = {"checkpoint": results["checkpoint"], "files": files}
    write_results(folder / "results.json", results)
    return folder


def exports(log: Path) -> dict[str, str]:
    """Run folder -> the stage-9 command run.sh launched for it."""
    lines = [line for line in log.read_text().splitlines() if "kd_modules.stages.export" in line]
    return {line.split()[2]: line for line in lines}


def test_stage_9_exports_each_student_once_and_skips_exported_runs(tmp_path, recorder):
    """Every evaluated student is exported with --quantize and its fold's test manifest, labels
    and calibration clips; a run whose export block names unchanged files is skipped (with an
    int8 file when --quantize true); the teacher only with --export_teacher true."""
    stub, log = recorder
    data = prepared(tmp_path, "fsdd", "seeded", [1])
    runs = tmp_path / "exp" / "fsdd" / "fold1"
    teacher = evaluated_run(runs / "teacher" / "cnn" / "none" / "seed1")
    alone = evaluated_run(runs / "student" / "xvector_small" / "none" / "seed1")
    kd = evaluated_run(runs / "student/xvector_small/kd/seed1", ("onnx", "export_json"))
    args = [
        "--python",
        str(stub),
        "--stage",
        "9",
        "--stop_stage",
        "9",
        "--methods",
        "kd",
        "--device",
        "cpu",
        *folders(tmp_path),
    ]

    log.write_text("")
    proc = run_recipe(RECIPE, *args, "--quantize", "false")
    assert list(exports(log)) == [str(alone)]
    assert exports(log)[str(alone)] == (
        f"-m kd_modules.stages.export {alone} --quantize false --test_manifest "
        f"{data}/fold1/test.json --labels_file {data}/labels.json --calibration_manifest "
        f"{data}/fold1/train.json"
    )
    assert f"stage 9: {kd} already exported" in proc.stdout
    log.write_text("")
    proc = run_recipe(RECIPE, *args, "--quantize", "true", "--export_teacher", "true")
    assert sorted(exports(log)) == sorted(map(str, (teacher, alone, kd)))
    assert all(" --quantize true " in line for line in exports(log).values())
    assert f"stage 9: exporting {kd} (exported without an int8 model)" in proc.stdout


@pytest.mark.parametrize(
    ("recipe", "files"),
    [
        ("audio_tagging", "--labels_file {data}/labels.json"),
        ("speaker_verification", "--trials_file {data}/trials.txt"),
    ],
)
def test_stage_9_of_the_single_split_recipes_names_their_test_files(
    tmp_path, recorder, recipe, files
):
    stub, log = recorder
    folder = REPO / "recipes" / recipe
    dataset = {"audio_tagging": "sonyc_ust", "speaker_verification": "voxceleb1"}[recipe]
    data = tmp_path / "data" / dataset
    student = "crnn" if recipe == "audio_tagging" else "ecapa_tiny"
    run = evaluated_run(tmp_path / "exp" / dataset / "student" / student / "none" / "seed1")
    run_recipe(
        folder,
        "--python",
        str(stub),
        "--stage",
        "9",
        "--stop_stage",
        "9",
        "--methods",
        "",
        "--students",
        student,
        "--device",
        "cpu",
        *folders(tmp_path),
    )
    assert exports(log) == {
        str(run): f"-m kd_modules.stages.export {run} --quantize false --test_manifest "
        f"{data}/test.json {files.format(data=data)} --calibration_manifest {data}/train.json"
    }


def test_tensorboard_true_reaches_every_run_as_the_yaml_key(tmp_path, recorder):
    stub, log = recorder
    prepared(tmp_path, "fsdd", "seeded", [1])
    args = [
        "--python",
        str(stub),
        "--stage",
        "2",
        "--stop_stage",
        "5",
        "--methods",
        "kd",
        "--device",
        "cpu",
        *folders(tmp_path),
    ]
    run_recipe(RECIPE, *args, "--tensorboard", "true")
    trained = commands(log, "train.py")
    assert len(trained) == 3 and all(" --tensorboard True" in line for line in trained)
    log.write_text("")
    run_recipe(RECIPE, *args)
    assert not any("--tensorboard" in line for line in commands(log, "train.py"))


def test_a_datafree_method_makes_the_default_teacher_the_xvector(tmp_path, recorder):
    """FSDD's default teacher (the CNN) has no statistics pooling for FRAMI to reuse: with a
    data-free method in --methods the default is xvector_large, so stage 6 can run."""
    teacher = teacher_command(tmp_path, recorder, "--methods", "kd frami")
    assert "hparams/teacher/xvector_large.yaml" in teacher
    assert teacher.endswith("--number_of_epochs 15")


# ----- issue 18 item 2: stage 1's --nj -----------------------------------------------------------
@pytest.mark.parametrize(
    ("recipe", "dataset"),
    [
        ("sound_classification", "fsdd"),
        ("audio_tagging", None),
        ("speaker_verification", "librispeech"),
    ],
)
def test_nj_reaches_every_prepare(tmp_path, recorder, recipe, dataset):
    stub, log = recorder
    (tmp_path / "root").mkdir()
    data_options = ["--data_root", str(tmp_path / "root")] + (
        ["--dataset", dataset] if dataset else []
    )
    run_recipe(
        REPO / "recipes" / recipe,
        "--python",
        str(stub),
        "--stage",
        "1",
        "--stop_stage",
        "1",
        "--nj",
        "3",
        *data_options,
        *folders(tmp_path),
    )
    (command,) = commands(log, "local/prepare.py")
    assert " --nj 3 " in f"{command} "
