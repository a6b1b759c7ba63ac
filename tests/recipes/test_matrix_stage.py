"""Stage 8 of sound classification writes the method × task matrix beside RESULTS.md.

The run folders are results.json files with known accuracies and epoch times, as stage 7 leaves
them (no training: stage 8 alone, through the real ``run.sh`` and its Python).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import RECIPE, run_recipe

pytestmark = pytest.mark.slow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(folder: Path, role: str, arch: str, method: str, seed: int, accuracy: float):
    """A results.json with every field stage 8's tables read."""
    folder.mkdir(parents=True)
    run = {
        "task": "sound_classification",
        "dataset": "fsdd",
        "role": role,
        "method": method,
        "arch": arch,
        "seed": seed,
        "fold": 1,
        "metrics": {"accuracy": accuracy},
        "params": 1000,
        "macs": 10000,
        "latency_ms": 1.0,
        "epoch_time_s": 2.0 if method == "none" else 5.0,
        "teacher_fingerprint": None if role == "teacher" or method == "none" else "f1f1f1f1",
        "model_fingerprint": "f1f1f1f1" if role == "teacher" else f"s{method}{seed}",
    }
    (folder / "results.json").write_text(json.dumps(run))


def test_stage_8_writes_the_matrix(tmp_path: Path):
    exp = tmp_path / "exp" / "fsdd" / "fold1"
    write_run(exp / "teacher/cnn/none/seed1", "teacher", "cnn", "none", 1, 0.95)
    for seed, accuracies in enumerate([(0.70, 0.75), (0.72, 0.79)], start=1):
        for method, accuracy in zip(("none", "kd"), accuracies):
            folder = exp / "student" / "xvector_small" / method / f"seed{seed}"
            write_run(folder, "student", "xvector_small", method, seed, accuracy)
    folders = ["--data_dir", str(tmp_path / "data"), "--exp_dir", str(tmp_path / "exp")]
    stage_8 = ["--stage", "8", "--stop_stage", "8", "--seeds", "1 2"]
    run_recipe(RECIPE, "--python", sys.executable, *stage_8, *folders)
    out = tmp_path / "exp" / "fsdd" / "RESULTS_MATRIX.md"
    text = out.read_text()
    assert "| method | sound (fsdd, xvector_small, cnn teacher) |" in text
    assert "| kd | +6.00 ± 1.41 (×2.50) |" in text  # +5 and +7 points; 5 s over 2 s an epoch
    assert out.with_suffix(".png").read_bytes()[:8] == PNG_MAGIC
    assert out.with_suffix(".csv").read_text().count("\n") == 2  # header + the one cell
