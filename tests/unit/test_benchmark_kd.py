"""tools/benchmark_kd.py picks a recipe: its train.py and its output size, as its run.sh does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, load_module

benchmark = load_module("benchmark_kd", REPO / "tools" / "benchmark_kd.py")


def test_sound_classification_counts_the_dataset_labels(tmp_path: Path):
    (tmp_path / "labels.json").write_text(json.dumps([str(digit) for digit in range(10)]))
    fold = tmp_path / "fold1"
    assert benchmark.label_args("sound_classification", str(fold)) == ["--n_classes", "10"]


def test_audio_tagging_counts_fine_and_coarse_columns(tmp_path: Path):
    labels = {"fine": [f"f{i}" for i in range(29)], "coarse": [f"c{i}" for i in range(8)]}
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    assert benchmark.label_args("audio_tagging", str(tmp_path)) == ["--n_outputs", "37"]


@pytest.mark.parametrize("recipe", sorted(benchmark.DEFAULT_STUDENT))
def test_each_recipe_train_py_gives_the_benchmark_its_functions(recipe: str):
    module = benchmark.load_train_module(REPO / "recipes" / recipe)
    assert module.__file__ == str(REPO / "recipes" / recipe / "train.py")
    assert callable(module.dataio_prepare) and callable(module.make_brain)
    student = benchmark.parse_args(["--recipe", recipe, "--data_folder", "d",
                                    "--teacher_folder", "t"]).student  # fmt: skip
    assert (REPO / "recipes" / recipe / "hparams" / "student" / f"{student}.yaml").is_file()
