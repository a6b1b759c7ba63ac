"""The cache stage under torchrun (2 CPU processes, gloo): each rank computes its share of the
views and writes its own shards; the store equals the one a single process builds."""

from __future__ import annotations

import sys

import pytest
import torch
from conftest import RECIPE, run_recipe, torchrun, write_fsdd_manifests

from kd_modules.cache import TeacherCache

pytestmark = pytest.mark.slow

HP = RECIPE / "hparams"
PYTHON = [sys.executable]


def test_two_ranks_build_one_store_equal_to_one_process(tmp_path):
    data = write_fsdd_manifests(tmp_path / "data", {"train": 3, "valid": 1, "test": 1})
    common = [
        "--data_folder",
        str(data),
        "--n_classes",
        "10",
        "--num_workers",
        "0",
        "--device",
        "cpu",
        "--noprogressbar",
        "--augment",
        "True",
        "--cache_views",
        "2",
        "--cache_shard_size",
        "4",
    ]
    teacher = tmp_path / "teacher"
    run_recipe(
        RECIPE,
        "train.py",
        str(HP / "common.yaml"),
        str(HP / "student/xvector_small.yaml"),
        str(HP / "kd/none.yaml"),
        *common,
        "--output_folder",
        str(teacher),
        "--role",
        "teacher",
        "--number_of_epochs",
        "1",
        "--exp_root",
        str(tmp_path),
        program=PYTHON,
    )
    kd = [
        str(HP / "common.yaml"),
        str(HP / "student/xvector_small.yaml"),
        str(HP / "kd/kd.yaml"),
        *common,
        "--teacher_folder",
        str(teacher),
        "--output_folder",
        str(teacher),
    ]
    run_recipe(
        RECIPE,
        "cache_teacher.py",
        *kd,
        "--exp_root",
        str(tmp_path / "ddp"),
        "--distributed_backend",
        "gloo",
        program=torchrun(2),
    )
    run_recipe(RECIPE, "cache_teacher.py", *kd, "--exp_root", str(tmp_path / "one"), program=PYTHON)

    (ddp_folder,) = (tmp_path / "ddp" / "cache").iterdir()
    (one_folder,) = (tmp_path / "one" / "cache").iterdir()
    assert ddp_folder.name == one_folder.name  # the same key: same teacher, data and policy
    ranks = {shard.name.split("-")[1] for shard in ddp_folder.glob("shard-*.safetensors")}
    assert ranks == {"r0", "r1"}
    ddp, one = TeacherCache(ddp_folder), TeacherCache(one_folder)
    assert set(ddp.index) == set(one.index) and len(ddp) == 30
    for utt_id in sorted(one.index):
        for view in range(2):
            (got, got_params), (want, want_params) = ddp.read(utt_id, view), one.read(utt_id, view)
            assert torch.equal(got_params, want_params)
            for name in one.names:
                torch.testing.assert_close(got[name], want[name], rtol=2e-3, atol=2e-3)
