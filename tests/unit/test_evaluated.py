"""Stage 7's "already evaluated": every output file a results.json names must still exist with the
checksum recorded when it was written (issue 16, item 1: a deleted scores_snorm.txt was never
written again). The check (``kd_modules.outputs``), then ``evaluate_once`` of
``tools/stage_helpers.sh`` driving it with the real interpreter and a recording evaluation script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from kd_modules.outputs import OUTPUT_RECORD, not_evaluated_reason
from kd_modules.results import write_results

SCORES = ("scores.txt", "scores_snorm.txt")


def _results(run_dir: Path) -> dict:
    """A verification run's results.json fields, naming its score files as verify.py does
    (absolute paths) and a prediction file by its name (as the tagging recipe does)."""
    return {
        "task": "speaker_verification",
        "dataset": "voxceleb1",
        "role": "student",
        "method": "none",
        "arch": "ecapa_tiny",
        "seed": 1,
        "fold": 1,
        "metrics": {"eer": 0.1},
        "params": 1000,
        "macs": 1000,
        "latency_ms": 1.0,
        "checkpoint": "ckpt",
        "selection": "best valid",
        "teacher_fingerprint": None,
        "versions": {},
        "git_commit": "x",
        "wall_time_s": 1.0,
        "scores": {"raw": str(run_dir / SCORES[0]), "snorm": str(run_dir / SCORES[1])},
        "predictions": {"validate": "predictions_validate.csv"},
    }


@pytest.fixture
def evaluated(tmp_path: Path) -> Path:
    """A run folder trained, then evaluated: train_info.json older than results.json."""
    run_dir = tmp_path / "exp" / "student" / "ecapa_tiny" / "none" / "seed1"
    run_dir.mkdir(parents=True)
    (run_dir / "train_info.json").write_text("{}")
    os.utime(run_dir / "train_info.json", (1e9, 1e9))
    for name in (*SCORES, "predictions_validate.csv"):
        (run_dir / name).write_text(f"1 0.5 enrol test {name}\n")
    write_results(run_dir / "results.json", _results(run_dir))
    return run_dir


def test_write_results_records_each_named_output_checksum(evaluated):
    recorded = json.loads((evaluated / "results.json").read_text())[OUTPUT_RECORD]
    assert set(recorded) == {
        str(evaluated / SCORES[0]),
        str(evaluated / SCORES[1]),
        "predictions_validate.csv",
    }
    assert all(len(digest) == 64 for digest in recorded.values())
    assert not_evaluated_reason(evaluated) is None


def test_write_results_refuses_to_name_a_file_that_is_not_there(tmp_path):
    with pytest.raises(FileNotFoundError, match="scores.txt"):
        write_results(tmp_path / "results.json", _results(tmp_path))


def test_a_deleted_output_is_not_evaluated(evaluated):
    (evaluated / "scores_snorm.txt").unlink()
    assert not_evaluated_reason(evaluated) == f"{evaluated / 'scores_snorm.txt'} is missing"


def test_a_modified_output_is_not_evaluated(evaluated):
    (evaluated / "predictions_validate.csv").write_text("edited\n")
    reason = not_evaluated_reason(evaluated)
    assert reason == "predictions_validate.csv changed since it was evaluated"


def test_a_results_json_without_checksums_is_not_evaluated(evaluated):
    results = json.loads((evaluated / "results.json").read_text())
    del results[OUTPUT_RECORD]  # written before the checksums were recorded
    (evaluated / "results.json").write_text(json.dumps(results))
    assert "has no checksum" in not_evaluated_reason(evaluated)


def test_a_run_trained_after_its_evaluation_is_not_evaluated(evaluated):
    (evaluated / "train_info.json").write_text("{}")  # now newer than results.json
    assert not_evaluated_reason(evaluated) == "trained again since its results.json was written"


# ----- evaluate_once in tools/stage_helpers.sh -------------------------------------------------
def evaluate_once(run_dir: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess, list]:
    """``evaluate_once RUN_DIR eval.py --seed 1`` with the real --python and an eval.py that
    records its arguments; returns the shell's result and the recorded evaluations."""
    record = tmp_path / "evaluations.json"
    script = tmp_path / "eval.py"
    script.write_text(
        "import json, sys\n"
        f"path = {str(record)!r}\n"
        "try:\n    runs = json.load(open(path))\nexcept FileNotFoundError:\n    runs = []\n"
        "json.dump(runs + [sys.argv[1:]], open(path, 'w'))\n"
    )
    shell = (
        f'stage=7 stop_stage=7 ngpu=1 device=cpu python="{sys.executable}"\n'
        f'. "{REPO}/tools/stage_helpers.sh"\n'
        f'evaluate_once "{run_dir}" "{script}" --seed 1\n'
    )
    proc = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=60)
    return proc, json.loads(record.read_text()) if record.is_file() else []


def test_stage_7_skips_an_evaluated_run(evaluated, tmp_path):
    proc, evaluations = evaluate_once(evaluated, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"stage 7: {evaluated} already evaluated" in proc.stdout
    assert evaluations == []


@pytest.mark.parametrize("change", ["delete", "modify"])
def test_stage_7_evaluates_again_a_run_whose_output_is_gone_or_changed(evaluated, tmp_path, change):
    scores = evaluated / "scores_snorm.txt"
    scores.unlink() if change == "delete" else scores.write_text("edited\n")
    proc, evaluations = evaluate_once(evaluated, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "already evaluated" not in proc.stdout
    reason = "is missing" if change == "delete" else "changed since it was evaluated"
    assert f"stage 7: evaluating {evaluated} again: {scores} {reason}" in proc.stdout
    assert evaluations == [["--seed", "1", "--output_folder", str(evaluated), "--test_only"]]
