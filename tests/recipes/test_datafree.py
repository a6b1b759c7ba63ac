"""Data-free KD end to end on CPU: a teacher trained on real FSDD clips (train.py), a FRAMI pool
and a student distilled on the pool alone (synthesize.py, stage 6), tested on held-back real
clips; then the same pool synthesised by 2 gloo processes under torchrun (one manifest).

Tiny models and pools (about 2 minutes on 2 cores): the teacher is the recipe's small x-vector,
the student a 3-block x-vector with 32-64 channels.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import RECIPE, run_recipe, torchrun, write_fsdd_manifests

from kd_modules.hparams import load_composed
from kd_modules.synthesis import SyntheticPool
from kd_modules.teacher import load_teacher

pytestmark = pytest.mark.slow

TINY_STUDENT = """arch: xvector_tiny
embedding_dim: 32
model: !new:kd_modules.models.EmbeddingClassifier
    encoder: !new:speechbrain.lobes.models.Xvector.Xvector
        in_channels: !ref <n_mels>
        tdnn_blocks: 3
        tdnn_channels: [32, 32, 64]
        tdnn_kernel_sizes: [5, 3, 1]
        tdnn_dilations: [1, 2, 1]
        lin_neurons: !ref <embedding_dim>
    embedding_dim: !ref <embedding_dim>
    n_classes: !ref <n_classes>
"""
# lambda_bn 0.005: the YAML's 0.0005 is for xvector_large; the teacher here is xvector_small,
# whose BatchNorm gap is ~5x smaller (README, "Why these scales")
POOL_ARGS = [
    "--samples_per_class",
    "40",
    "--synthesis_steps",
    "100",
    "--min_frames",
    "50",
    "--max_frames",
    "90",
    "--lambda_bn",
    "0.005",
]


def common_options(tmp: Path) -> list[str]:
    """The options every train.py / synthesize.py call here ends with: data and exp under tmp."""
    return [
        "--data_folder",
        str(tmp / "data" / "fold1"),
        "--n_classes",
        "10",
        "--exp_root",
        str(tmp / "exp"),
        "--device",
        "cpu",
        "--num_workers",
        "0",
        "--max_duration_s",
        "1.0",
    ]


def datafree_args(
    tmp: Path,
    method: str,
    pool: Path,
    output: Path,
    student: Path,
    pool_args: list[str] = POOL_ARGS,
) -> list[str]:
    return [
        "synthesize.py",
        "hparams/common.yaml",
        str(student),
        "hparams/synthesis/frami.yaml",
        f"hparams/kd/{method}.yaml",
        "--teacher_folder",
        str(tmp / "exp" / "teacher"),
        "--pool_folder",
        str(pool),
        "--output_folder",
        str(output),
        *pool_args,
    ]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("datafree")
    write_fsdd_manifests(tmp / "data" / "fold1", {"train": 30, "valid": 8, "test": 10})
    student = tmp / "xvector_tiny.yaml"
    student.write_text(TINY_STUDENT)
    teacher = tmp / "exp" / "teacher"
    run_recipe(
        RECIPE,
        "train.py",
        "hparams/common.yaml",
        "hparams/student/xvector_small.yaml",
        "hparams/kd/none.yaml",
        "--role",
        "teacher",
        "--output_folder",
        str(teacher),
        "--number_of_epochs",
        "15",
        *common_options(tmp),
        program=[sys.executable],
    )
    args = datafree_args(tmp, "frami_noreuse", tmp / "pool", tmp / "student", student)
    run_recipe(
        RECIPE,
        *args,
        "--number_of_epochs",
        "20",
        "--lr",
        "0.005",
        *common_options(tmp),
        program=[sys.executable],
    )
    return tmp


def recipe_teacher(tmp: Path):
    """The fixture's teacher, loaded as synthesize.py loads it (frozen, eval mode)."""
    files = [
        RECIPE / "hparams" / name
        for name in (
            "common.yaml",
            "student/xvector_small.yaml",
            "synthesis/frami.yaml",
            "kd/frami_noreuse.yaml",
        )
    ]
    hparams = load_composed(
        files,
        {
            "teacher_folder": str(tmp / "exp" / "teacher"),
            "pool_folder": str(tmp / "pool"),
            "output_folder": str(tmp / "student"),
            "data_folder": str(tmp / "data" / "fold1"),
            "n_classes": 10,
            "exp_root": str(tmp / "exp"),
        },
    )
    return load_teacher(hparams).model.eval()


def test_student_from_synthetic_samples_only_is_above_chance(experiment: Path):
    results = json.loads((experiment / "student" / "results.json").read_text())
    teacher = json.loads((experiment / "exp" / "teacher" / "results.json").read_text())
    accuracy = results["metrics"]["accuracy"]  # 100 real held-back clips, 10 classes
    # chance 0.1. Measured with these settings (teacher 0.85): FRAMI 0.58, 0.59, 0.57 and
    # DeepInversion 0.55, 0.63 (seeds 1-3, 1-2); 0.17 before (NewBob, lambda_bn 0.05, init_std 1)
    assert accuracy >= 0.3, (accuracy, teacher["metrics"]["accuracy"])
    synthesis = results["synthesis"]
    assert synthesis["samples"] == 400 and synthesis["synthesizer"] == "frami"
    assert synthesis["wall_time_s"] > 0 and results["method"] == "frami_noreuse"
    assert results["teacher_fingerprint"] == teacher["model_fingerprint"]


def test_teacher_assigns_the_pool_samples_to_their_targets(experiment: Path):
    """The synthesis settings invert the teacher: it classifies (nearly) every pool sample as its
    synthesis target (13 % with the former lambda_bn 0.05, init_std 1, lr 0.1)."""
    pool, teacher = SyntheticPool(experiment / "pool"), recipe_teacher(experiment)
    manifest = pool.manifest()
    with torch.no_grad():
        predicted = {i: int(teacher(pool.load(i)[None], None)["logits"].argmax()) for i in manifest}
    hits = [predicted[i] == entry["label_id"] for i, entry in manifest.items()]
    assert sum(hits) / len(hits) >= 0.8, sum(hits) / len(hits)


def test_pool_is_class_balanced_with_variable_lengths(experiment: Path):
    manifest = SyntheticPool(experiment / "pool").manifest()
    labels = [entry["label_id"] for entry in manifest.values()]
    assert sorted(labels) == sorted(list(range(10)) * 40)
    assert len({entry["frames"] for entry in manifest.values()}) > 1
    assert (experiment / "pool" / "real_examples.pt").is_file()


def test_two_gloo_ranks_synthesise_one_pool(experiment: Path):
    tmp = experiment
    pool = tmp / "ddp_pool"
    small = [
        "--samples_per_class",
        "4",
        "--synthesis_steps",
        "5",
        "--synthesis_batch_size",
        "10",
        "--min_frames",
        "30",
        "--max_frames",
        "40",
    ]
    args = datafree_args(
        tmp, "frami_noreuse", pool, tmp / "ddp_student", tmp / "xvector_tiny.yaml", small
    )
    run_recipe(
        RECIPE,
        *args,
        "--number_of_epochs",
        "1",
        "--skip_test",
        "True",
        "--distributed_backend",
        "gloo",
        *common_options(tmp),
        program=torchrun(2),
    )
    manifest = SyntheticPool(pool).manifest()
    assert sorted(entry["label_id"] for entry in manifest.values()) == sorted(list(range(10)) * 4)
    parts = sorted(p.name for p in (pool / "parts").glob("*.json"))
    assert parts == [f"b{i:06d}.json" for i in range(4)]  # batches 0, 2 by rank 0; 1, 3 by rank 1
    assert json.loads((tmp / "ddp_student" / "train_info.json").read_text())["finished"]
