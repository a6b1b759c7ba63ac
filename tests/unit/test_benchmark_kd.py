"""tools/benchmark_kd.py picks a recipe: its train.py and its output size, as its run.sh does,
and reports each variant's epoch time against the student alone and logit KD."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from conftest import REPO, SHARED_DATA

from kd_modules.data_info import DATA_INFO, data_info
from recipes.speaker_verification.local import prepare
from tools import benchmark_kd as benchmark

SPEAKER = REPO / "recipes" / "speaker_verification"


@pytest.mark.parametrize(
    ("recipe", "key", "in_fold"),
    [
        ("sound_classification", "n_classes", True),
        ("audio_tagging", "n_outputs", False),
        ("speaker_verification", "n_speakers", False),
    ],
)
def test_the_output_size_is_stage_1s_data_info(tmp_path: Path, recipe, key, in_fold):
    """The count run.sh passes: data_info.json's ``outputs`` (sound classification: the dataset
    folder's, one above the fold that --data_folder names)."""
    (tmp_path / "labels.json").write_text("[]")
    (tmp_path / DATA_INFO).write_text(json.dumps(data_info(tmp_path, "d", 37, ["labels.json"])))
    folder = tmp_path / "fold1" if in_fold else tmp_path
    assert benchmark.label_args(recipe, str(folder)) == [f"--{key}", "37"]


def test_teacher_dim_is_the_top_level_embedding_dim_of_the_teacher_run(tmp_path: Path):
    """The teacher's run folder keeps its composed YAML; a nested ``embedding_dim`` (the model's
    constructor argument) is not the top-level key run.sh reads."""
    architecture = (SPEAKER / "hparams" / "teacher" / "ecapa_tiny.yaml").read_text()
    nested_first = architecture.replace("embedding_dim: 64\n", "", 1).replace(
        "    embedding_dim: !ref <embedding_dim>", "    embedding_dim: 512"
    )
    (tmp_path / "hyperparams.yaml").write_text(nested_first + "embedding_dim: 96\n")
    assert benchmark.teacher_dim_args("speaker_verification", str(tmp_path)) == [
        "--teacher_embedding_dim",
        "96",
    ]
    assert benchmark.teacher_dim_args("sound_classification", str(tmp_path)) == []


def test_teacher_without_embedding_dim_is_an_error_naming_the_file(tmp_path: Path):
    (tmp_path / "hyperparams.yaml").write_text("model:\n    embedding_dim: 64\n")
    with pytest.raises(SystemExit) as error:
        benchmark.teacher_dim_args("speaker_verification", str(tmp_path))
    assert str(error.value) == (
        f"{tmp_path / 'hyperparams.yaml'}: no top-level 'embedding_dim: <int>' (the teacher's size)"
    )


@pytest.mark.parametrize("recipe", sorted(benchmark.RECIPE_DEFAULTS))
def test_each_recipe_train_py_gives_the_benchmark_its_functions(recipe: str):
    module = benchmark.train_module(recipe)
    assert module.__file__ == str(REPO / "recipes" / recipe / "train.py")
    assert callable(module.dataio_prepare) and callable(module.make_brain)
    args = benchmark.parse_args(["--recipe", recipe, "--data_folder", "d", "--teacher_folder", "t"])
    hparams = REPO / "recipes" / recipe / "hparams"
    assert (hparams / "student" / f"{args.student}.yaml").is_file()
    assert all((hparams / "kd" / f"{method}.yaml").is_file() for method in args.methods)


def test_ratios_to_the_student_alone_and_to_logit_kd_live_and_cached():
    times = {
        "student alone": [2.0, 4.0, 3.0],
        "kd, live teacher": [5.0, 6.0, 7.0],
        "kd, teacher cache": [3.5, 3.0, 4.0],
        "imlkd, live teacher": [40.0, 42.0, 41.0],
        "imlkd, teacher cache": [4.5, 3.9, 4.1],
    }
    header, rule, *rows = benchmark.ratio_table(times)
    assert header.split(" | ")[2:5] == [f"ratio to {ref}" for ref in benchmark.RATIO_REFERENCES]
    assert rule == "|---" * 6 + "|"
    medians = {name: statistics.median(values) for name, values in times.items()}
    row = dict(zip(times, rows))["imlkd, teacher cache"].split(" | ")
    assert row[1] == f"{medians['imlkd, teacher cache']:.2f}"
    assert row[2:5] == [
        f"{medians['imlkd, teacher cache'] / medians[ref]:.2f}x"
        for ref in ("student alone", "kd, live teacher", "kd, teacher cache")
    ]


def test_without_logit_kd_the_only_ratio_is_to_the_student_alone():
    times = {"student alone": [2.0], "sp, live teacher": [3.0]}
    header, _, _, sp = benchmark.ratio_table(times)
    assert header == "| variant | median epoch s | ratio to student alone | all epochs s |"
    assert sp == "| sp, live teacher | 3.00 | 1.50x | 3.00 |"


def test_speaker_verification_variant_composes_the_recipe_defaults(tmp_path: Path):
    """The student-alone variant on prepared LibriSpeech speech: the speaker count and the
    teacher's embedding size reach the YAML, and ``--cache_views`` is left to the recipe (so an
    --extra_args override of it is no duplicate key)."""
    shared = SHARED_DATA / "librispeech_subset"
    if not shared.is_dir():
        pytest.skip(f"{shared} is not available")
    data = tmp_path / "data"
    prepare.main(
        [
            "--dataset",
            "librispeech",
            "--data_root",
            str(shared),
            "--out_dir",
            str(data),
            "--convert",
            "none",
        ]
    )
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "hyperparams.yaml").write_text("embedding_dim: 48\n")
    args = benchmark.parse_args(
        [
            "--recipe",
            "speaker_verification",
            "--data_folder",
            str(data),
            "--teacher_folder",
            str(teacher),
            "--student",
            "ecapa_tiny",
            "--extra_args",
            "--cache_views 1",
        ]
    )
    train = benchmark.train_module("speaker_verification")
    brain, train_set, _, files = benchmark.make_variant(args, train, "none", False, tmp_path)
    speakers = json.loads((data / "speakers.json").read_text())
    assert brain.hparams.n_speakers == len(speakers)
    assert brain.hparams.teacher_embedding_dim == 48
    assert (brain.hparams.cache_views, brain.hparams.augment) == (1, False)
    assert len(train_set) == len(json.loads((data / "train.json").read_text()))
    assert files[-1] == SPEAKER / "hparams" / "kd" / "none.yaml"
