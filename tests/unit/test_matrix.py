"""The method × task matrix from a folder of synthetic results.json files with known values.

Sound classification (two teachers), audio tagging and speaker verification runs, written as
results.json files; the matrix must give the changes, stds, epoch-time ratios and signs computed
by hand here, an empty cell with its footnote for a method missing on a task, and its CSV and
heat map (``kd-collect-results --matrix``).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from kd_modules import results
from kd_modules.matrix import MISSING, improvement_grid, matrix_cells

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TEACHERS = {"sound_classification": ("cnn", "aaaa1111"), "audio_tagging": ("cnn10", "dddd4444")}
TEACHERS["speaker_verification"] = ("ecapa", "eeee5555")


def write_run(root: Path, task: str, method: str, seed: int, value: float, epoch_s: float, **kw):
    """One results.json with the fields the matrix reads (``kw`` overrides them)."""
    metric = {
        "sound_classification": "accuracy",
        "audio_tagging": "coarse_micro_auprc",
        "speaker_verification": "eer",
    }[task]
    teacher = None if method == "none" else TEACHERS[task][1]
    run = {
        "task": task,
        "dataset": {"sound_classification": "fsdd"}.get(task, "demo"),
        "role": "student",
        "method": method,
        "arch": "small",
        "seed": seed,
        "fold": 1,
        "metrics": {metric: value},
        "teacher_fingerprint": teacher,
        "epoch_time_s": epoch_s,
        **kw,
    }
    folder = root / task / run["role"] / run["arch"] / method / f"seed{seed}{kw.get('tag', '')}"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(run))


def write_teacher(root: Path, task: str, arch: str, fingerprint: str) -> None:
    folder = root / task / "teacher" / arch
    folder.mkdir(parents=True)
    run = {"task": task, "dataset": "x", "role": "teacher", "method": "none", "arch": arch}
    run |= {"seed": 1, "fold": 1, "metrics": {}, "model_fingerprint": fingerprint}
    (folder / "results.json").write_text(json.dumps(run))


@pytest.fixture
def exp(tmp_path: Path) -> Path:
    root = tmp_path / "exp"
    for task, (arch, fingerprint) in TEACHERS.items():
        write_teacher(root, task, arch, fingerprint)
    write_teacher(root, "sound_classification", "xvector_large", "bbbb2222")
    sound = "sound_classification"
    for seed, (alone, kd) in enumerate([(0.80, 0.83), (0.82, 0.86), (0.84, 0.85)], start=1):
        write_run(root, sound, "none", seed, alone, 2.0)
        write_run(root, sound, "kd", seed, kd, 3.0)
    write_run(root, sound, "dkd", 1, 0.78, 2.5)  # seed 1 alone: 0.80 -> -2 points
    write_run(root, sound, "kd", 1, 0.81, 4.0, teacher_fingerprint="bbbb2222", tag="_large")
    write_run(root, "audio_tagging", "none", 1, 0.50, 10.0)
    write_run(root, "audio_tagging", "kd", 1, 0.55, 12.0)
    for seed, (alone, kd) in enumerate([(0.10, 0.08), (0.10, 0.09)], start=1):
        write_run(root, "speaker_verification", "none", seed, alone, 4.0)
        write_run(root, "speaker_verification", "kd", seed, kd, 2.0)
    return root


def cells_by_label(exp: Path) -> dict:
    matrix = matrix_cells(results.collect(exp))
    return matrix, {(m, c.label): cell for (m, c), cell in matrix.cells.items()}


SOUND = "sound (fsdd, small, cnn teacher)"
SOUND_LARGE = "sound (fsdd, small, xvector_large teacher)"
TAGGING = "tagging (demo, small, cnn10 teacher)"
SPEAKER = "speaker (demo, small, ecapa teacher)"


def test_cells_are_the_changes_against_the_student_alone(exp: Path):
    matrix, cells = cells_by_label(exp)
    assert [c.label for c in matrix.columns] == [TAGGING, SOUND, SOUND_LARGE, SPEAKER]
    assert matrix.methods == ["dkd", "kd"]
    kd = cells[("kd", SOUND)]  # +3, +4, +1 points, each seed against its own student alone
    assert kd.changes == pytest.approx([3.0, 4.0, 1.0])
    assert kd.mean == pytest.approx(8 / 3)
    assert kd.std == pytest.approx(math.sqrt(7 / 3))
    assert kd.time_ratio == pytest.approx(1.5)
    assert cells[("dkd", SOUND)].changes == pytest.approx([-2.0])
    assert cells[("dkd", SOUND)].std is None
    assert cells[("kd", SOUND_LARGE)].changes == pytest.approx([1.0])  # its own teacher's column
    assert cells[("kd", SOUND_LARGE)].time_ratio == pytest.approx(2.0)
    assert cells[("kd", TAGGING)].changes == pytest.approx([5.0])  # AUPRC points
    assert cells[("kd", TAGGING)].time_ratio == pytest.approx(1.2)
    speaker = cells[("kd", SPEAKER)]  # EER 10 % -> 8 %, 9 %: -20 %, -10 % relative
    assert speaker.changes == pytest.approx([-20.0, -10.0])
    assert speaker.std == pytest.approx(math.sqrt(50.0))
    assert speaker.time_ratio == pytest.approx(0.5)
    assert ("dkd", TAGGING) not in cells and ("dkd", SPEAKER) not in cells


def test_heat_map_colours_say_better_as_positive_on_every_task(exp: Path):
    matrix, _ = cells_by_label(exp)
    grid = dict(zip(matrix.methods, improvement_grid(matrix)))
    kd = dict(zip([c.label for c in matrix.columns], grid["kd"]))
    assert kd[SPEAKER] == pytest.approx(15.0)  # lower EER: the improvement is the negated change
    assert kd[SOUND] == pytest.approx(8 / 3)
    assert math.isnan(dict(zip([c.label for c in matrix.columns], grid["dkd"]))[TAGGING])


def test_cli_writes_the_table_csv_and_heat_map(exp: Path, tmp_path: Path):
    out = tmp_path / "results" / "RESULTS_MATRIX.md"  # a folder --out creates
    results.main(["--matrix", str(exp / "sound_classification"), str(exp), "--out", str(out)])
    text = out.read_text()
    header = next(line for line in text.splitlines() if line.startswith("| method"))
    columns = [cell.strip() for cell in header.strip("|").split("|")][1:]
    rows = {
        line.split("|")[1].strip(): [cell.strip() for cell in line.strip("|").split("|")][1:]
        for line in text.splitlines()
        if line.startswith("| ") and not line.startswith("| method")
    }
    kd, dkd = dict(zip(columns, rows["kd"])), dict(zip(columns, rows["dkd"]))
    assert kd[SOUND] == "+2.67 ± 1.53 (×1.50)"
    assert kd[SPEAKER] == "-15.00 ± 7.07 (×0.50)"
    assert kd[TAGGING] == "+5.00 (×1.20)"
    assert dkd[SOUND] == "-2.00 (×1.25)"
    assert dkd[TAGGING] == dkd[SPEAKER] == "–" + MISSING
    assert f"{MISSING} no run of this method in this column" in text
    assert "lower EER is better: a negative change is an improvement" in text
    with open(out.with_suffix(".csv")) as handle:
        lines = {(r["method"], r["column"]): r for r in csv.DictReader(handle)}
    assert float(lines[("kd", SPEAKER)]["mean_change"]) == pytest.approx(-15.0)
    assert float(lines[("kd", SOUND)]["std_change"]) == pytest.approx(math.sqrt(7 / 3), 1e-5)
    assert lines[("kd", SOUND)]["runs"] == "3" and lines[("kd", SPEAKER)]["unit"] == "% relative"
    assert ("dkd", TAGGING) not in lines
    assert out.with_suffix(".png").read_bytes()[:8] == PNG_MAGIC


def test_column_without_a_student_alone_is_footnoted(exp: Path, tmp_path: Path):
    for folder in (exp / "audio_tagging/student/small/none").iterdir():
        (folder / "results.json").unlink()
    out = tmp_path / "m.md"
    results.main(["--matrix", str(exp), "--out", str(out)])
    row = next(line for line in out.read_text().splitlines() if line.startswith("| kd |"))
    assert "–²" in row
    assert "² no student-alone run in this column" in out.read_text()


def test_cli_refuses_an_empty_folder_in_one_line(tmp_path: Path):
    with pytest.raises(SystemExit, match="No results.json under"):
        results.main(["--matrix", str(tmp_path), "--out", str(tmp_path / "m.md")])


def test_a_full_matrix_has_no_missing_cell_footnote(exp: Path, tmp_path: Path):
    out = tmp_path / "m.md"
    results.main(["--matrix", str(exp / "speaker_verification"), "--out", str(out)])
    assert "| kd | -15.00 ± 7.07 (×0.50) |" in out.read_text()
    assert MISSING not in out.read_text()
