"""``run.sh --teacher_source FOLDER --teacher hub_ecapa`` of the speaker recipe on the
VoxCeleb1-layout stand-in (real LibriSpeech/VCTK speech): a hub-format ECAPA folder (192-dim
embedding as the hub models', seeded random weights, foreign speaker names) teaches embedding KD
and SP through hub_ecapa.yaml's tap points, live; stage 2 is skipped, stage 7 verifies the students,
and stage 8 reports them (no IML-KD comparison or figure without stage 2's teacher)."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import SPEAKER_VERIFICATION, run_recipe
from hub_folders import write_hub_folder

pytestmark = pytest.mark.slow


def test_a_hub_folder_teaches_the_speaker_recipe(tmp_path, shared_data):
    write_hub_folder(tmp_path / "hub", [f"id1{k:04d}" for k in range(20)], embedding_dim=192)
    exp = tmp_path / "exp"
    done = run_recipe(
        SPEAKER_VERIFICATION,
        "--python",
        sys.executable,
        "--standin",
        "true",
        "--dataset",
        "voxceleb1",
        "--device",
        "cpu",
        "--teacher",
        "hub_ecapa",
        "--teacher_source",
        tmp_path / "hub",
        "--students",
        "ecapa_tiny",
        "--methods",
        "embedding_cosine sp",
        "--data_dir",
        tmp_path / "data",
        "--exp_dir",
        exp,
        "--use_cache",
        "false",  # the live teacher on its own front end (the cached one: the FSDD recipe test)
        "--extra_args",
        "--number_of_epochs 1 --num_workers 0",
        timeout_s=900,
    )
    assert "stage 2: skipped: the teacher is --teacher_source" in done.stdout
    assert "no IML-KD comparison or integrated-gradients figure" in done.stdout
    for method, term in (("embedding_cosine", "kd_embedding"), ("sp", "kd_sp")):
        [run] = (exp / "voxceleb1").rglob(f"student/ecapa_tiny/{method}/seed1")
        results = json.loads((run / "results.json").read_text())
        assert 0.0 <= results["metrics"]["eer"] <= 1.0
        history = json.loads((run / "history.json").read_text())
        assert all(entry["stats"][term] > 0 for entry in history if entry["stage"] == "train")
        source = json.loads((run / "run_record.json").read_text())["teacher_source"]
        assert source["source"] == str(tmp_path / "hub")
    assert "embedding_cosine" in (exp / "voxceleb1" / "RESULTS.md").read_text()
