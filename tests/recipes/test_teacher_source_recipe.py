"""``run.sh --teacher_source FOLDER`` end to end on real FSDD clips (sound classification): a
hub-format ECAPA folder (the layout of speechbrain/spkrec-ecapa-voxceleb, seeded random weights,
the digits as its label encoder's classes) is the teacher; stage 2 is skipped, stage 3 caches it
on its own front end, the KD students (logit KD through the label map, embedding KD through a
learned projection) train from it and are evaluated, their run records name the source, and
stage 8 reports them without a teacher row of its own."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from conftest import FSDD_CLIPS, RECIPE, run_recipe
from hub_folders import DIGITS, write_hub_folder

pytestmark = pytest.mark.slow
TAKES = range(5, 7)  # takes 5-6 of every speaker and digit: 6 x 10 x 2 = 120 clips


def test_a_hub_folder_teaches_through_run_sh(tmp_path):
    recordings = tmp_path / "fsdd" / "free-spoken-digit-dataset" / "recordings"
    recordings.mkdir(parents=True)
    for clip in sorted(FSDD_CLIPS.glob("*.flac")):
        if int(clip.stem.split("_")[2]) in TAKES:
            shutil.copy2(clip, recordings / clip.name)
    write_hub_folder(tmp_path / "hub", DIGITS, embedding_dim=256)  # kd/embedding_cosine.yaml's
    exp = tmp_path / "exp"
    done = run_recipe(
        RECIPE,
        "--python",
        sys.executable,
        "--data_root",
        tmp_path / "fsdd",
        "--split",
        "seeded",
        "--teacher",
        "hub_ecapa",
        "--teacher_source",
        tmp_path / "hub",
        "--methods",
        "kd embedding_cosine",
        "--device",
        "cpu",
        "--exp_dir",
        exp,
        "--data_dir",
        tmp_path / "data",
        "--extra_args",
        "--number_of_epochs 2 --num_workers 0",
    )
    assert f"stage 2: skipped: the teacher is --teacher_source {tmp_path / 'hub'}" in done.stdout
    assert not list((exp / "fsdd").rglob("teacher/**/train_info.json"))  # nothing trained it
    [cache] = (exp / "cache").glob("*/meta.json")
    assert json.loads(cache.read_text())["teacher_source"] == str(tmp_path / "hub")
    for method, term in (("kd", "kd_kd"), ("embedding_cosine", "kd_embedding")):
        [run] = (exp / "fsdd").rglob(f"student/xvector_small/{method}/seed1")
        results = json.loads((run / "results.json").read_text())
        assert 0.0 <= results["metrics"]["accuracy"] <= 1.0
        history = json.loads((run / "history.json").read_text())
        assert all(entry["stats"][term] > 0 for entry in history if entry["stage"] == "train")
        record = json.loads((run / "run_record.json").read_text())
        source = record["teacher_source"]
        assert source["source"] == str(tmp_path / "hub") and source["trust_teacher_code"] is False
        assert set(source["sha256"]) >= {"hyperparams.yaml", "embedding_model.ckpt"}
    report = (exp / "fsdd" / "RESULTS.md").read_text()
    assert "embedding_cosine" in report


def test_data_free_methods_refuse_a_teacher_source(tmp_path):
    """Data-free KD inverts the teacher on the student's features: one line, before any stage."""
    done = run_recipe(
        RECIPE,
        "--python",
        sys.executable,
        "--data_root",
        tmp_path,
        "--teacher_source",
        tmp_path / "hub",
        "--methods",
        "kd frami",
        check=False,
    )
    assert done.returncode != 0 and "stage 0" not in done.stdout
    assert done.stderr.strip().splitlines()[-1] == (
        "run.sh: --methods frami: data-free KD inverts the teacher on the student's features, "
        "not --teacher_source's own front end"
    )
