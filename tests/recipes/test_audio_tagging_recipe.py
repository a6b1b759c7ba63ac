"""End to end: the audio-tagging ``run.sh`` on the SONYC-UST stand-in tree, every stage 0-8.

One module-scoped run (a tiny teacher, the one-conv + LSTM student with every method, 2 epochs,
about 2-3 minutes on 2 CPU cores) is shared by the tests; the tree holds an eval release too. The
predictions CSVs of validate and eval are scored again here against the verified rows of
``annotations.csv`` (read with the csv module), through the library's DCASE metrics, and must
give the numbers results.json reports. The same command run a second time must resume: nothing
is prepared, trained or evaluated again.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import AUDIO_TAGGING, run_recipe

from kd_modules.metrics import dcase_coarse_metrics, dcase_fine_metrics
from kd_modules.results import REQUIRED_FIELDS
from kd_modules.stages.status import yaml_value
from recipes.audio_tagging.local import make_standin as standin

pytestmark = pytest.mark.slow

RECIPE = AUDIO_TAGGING

PAPER_METHODS = ("kd", "sp", "iusp", "kd_sp", "kd_iusp", "fitnets")
MATRIX_METHODS = ("embedding_cosine", "mlkd", "imlkd")  # the other library methods (issue 19)
METHODS = (*PAPER_METHODS, *MATRIX_METHODS)
RUNS = [("teacher", "cnn10", "none"), *(("student", "crnn", m) for m in ("none", *METHODS))]
N_VALIDATE, N_EVAL = 12, 6
TEST_SETS = {"validate": ("validate", N_VALIDATE), "eval": (standin.EVAL_SPLIT, N_EVAL)}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TIMEOUT_S = 1500


@dataclass
class Experiment:
    tree: Path
    exp: Path
    data: Path
    proc: subprocess.CompletedProcess
    command: list[str]

    def run_dir(self, role: str, arch: str, method: str) -> Path:
        return self.exp / role / arch / method / "seed1"


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Experiment:
    root = tmp_path_factory.mktemp("audio_tagging")
    tree = root / "release"
    standin.main(
        [
            "--out",
            str(tree),
            "--n_train",
            "40",
            "--n_validate",
            str(N_VALIDATE),
            "--n_eval",
            str(N_EVAL),
        ]
    )
    command = [
        "--python",
        sys.executable,
        "--data_root",
        str(tree),
        "--device",
        "cpu",
        "--students",
        "crnn",
        "--methods",
        " ".join(METHODS),
        "--data_dir",
        str(root / "data"),
        "--exp_dir",
        str(root / "exp"),
        "--extra_args",
        "--number_of_epochs 2 --num_workers 0 --batch_size 8 --teacher_width 64 --ig_steps 2",
    ]
    proc = run_recipe(RECIPE, *command, timeout_s=TIMEOUT_S)
    return Experiment(tree, root / "exp" / "sonyc_ust", root / "data" / "sonyc_ust", proc, command)


def saved_state(experiment: Experiment) -> dict[str, int]:
    """Path -> mtime of the prepared manifests, every teacher-cache file, and every file under
    each run's save/ (checkpoints) and its results.json."""
    cache = experiment.exp.parent / "cache"
    paths = [*experiment.data.glob("*.json"), *sorted(cache.rglob("*"))]
    assert any(path.name == "meta.json" for path in paths), f"no teacher cache under {cache}"
    for run in RUNS:
        folder = experiment.run_dir(*run)
        paths += [folder / "results.json", *sorted((folder / "save").rglob("*"))]
    kept = [path for path in paths if not path.name.startswith(".lock")]  # touched by any look
    return {str(path): path.stat().st_mtime_ns for path in kept}


@pytest.fixture(scope="module")
def resumed(experiment: Experiment) -> tuple[dict, dict, subprocess.CompletedProcess]:
    """The same command again: the saved state before and after, and the second run."""
    before = saved_state(experiment)
    second = run_recipe(RECIPE, *experiment.command, timeout_s=TIMEOUT_S, check=False)
    return before, saved_state(experiment), second


def verified_truth(tree: Path, columns: list[str], split: str) -> dict[str, list[int]]:
    """``split``'s clip -> its verified (annotator 0) row over ``columns``, from annotations.csv."""
    with open(tree / "annotations.csv", newline="") as f:
        return {
            row["audio_filename"]: [int(row[f"{c}_presence"]) for c in columns]
            for row in csv.DictReader(f)
            if row["split"] == split and row["annotator_id"] == "0"
        }


def test_every_stage_runs_in_order(experiment: Experiment):
    lines = [line for line in experiment.proc.stdout.splitlines() if "[run.sh] stage " in line]
    stages = [int(line.split("stage ")[1].split(":")[0]) for line in lines]
    assert stages == sorted(stages) and sorted(set(stages)) == list(range(9)), stages
    assert experiment.proc.stdout.rstrip().endswith("[run.sh] done")


@pytest.mark.parametrize("run", RUNS, ids=lambda run: f"{run[0]}-{run[2]}")
def test_results_json(experiment: Experiment, run):
    results = json.loads((experiment.run_dir(*run) / "results.json").read_text())
    assert not [name for name in REQUIRED_FIELDS if name not in results]
    assert (results["task"], results["dataset"]) == ("audio_tagging", "sonyc_ust")
    assert (results["role"], results["arch"], results["method"]) == run
    assert sorted(results["metrics"]) == sorted(
        f"{level}_{name}"
        for level in ("coarse", "fine")
        for name in ("micro_auprc", "macro_auprc", "micro_f1")
    )
    assert all(0.0 <= value <= 1.0 for value in results["metrics"].values())
    assert results["predictions"] == {name: f"predictions_{name}.csv" for name in TEST_SETS}
    assert results["test_sets"]["validate"] == results["metrics"]
    assert sorted(results["test_sets"]["eval"]) == sorted(results["metrics"])
    assert len(results["class_auprc"]["coarse"]) == 8 == len(results["class_auprc"]["fine"])
    assert "best validation coarse_micro_auprc" in results["selection"]
    assert results["params"] > 0 and results["macs"] > 0


@pytest.mark.parametrize("test_set", TEST_SETS)
@pytest.mark.parametrize("run", RUNS, ids=lambda run: f"{run[0]}-{run[2]}")
def test_predictions_csv_reproduces_the_reported_metrics(experiment: Experiment, run, test_set):
    folder = experiment.run_dir(*run)
    reported = json.loads((folder / "results.json").read_text())["test_sets"][test_set]
    labels = json.loads((experiment.data / "labels.json").read_text())
    with open(folder / f"predictions_{test_set}.csv", newline="") as f:
        reader = csv.reader(f)
        header, rows = next(reader), list(reader)
    assert header == ["audio_filename", *labels["fine"], *labels["coarse"]]
    assert any(name.split("_")[0].endswith("-X") for name in header)  # X tags included
    split, n_clips = TEST_SETS[test_set]
    truth = verified_truth(experiment.tree, labels["fine"] + labels["coarse"], split)
    assert sorted(row[0] for row in rows) == sorted(truth) and len(rows) == n_clips
    scores = np.array([[float(x) for x in row[1:]] for row in rows])
    assert ((scores >= 0) & (scores <= 1)).all()
    y = np.array([truth[row[0]] for row in rows])
    n_fine = len(labels["fine"])
    coarse = dcase_coarse_metrics(y[:, n_fine:], scores[:, n_fine:])
    fine = dcase_fine_metrics(y[:, :n_fine], scores[:, :n_fine], labels["fine_taxonomy"])
    for level, metrics in (("coarse", coarse), ("fine", fine)):
        for name in ("micro_auprc", "macro_auprc", "micro_f1"):
            assert metrics[name] == pytest.approx(reported[f"{level}_{name}"], abs=1e-12)


def test_kd_students_read_the_teacher_cache(experiment: Experiment):
    teacher = json.loads((experiment.run_dir(*RUNS[0]) / "results.json").read_text())
    for run in RUNS[2:]:
        info = json.loads((experiment.run_dir(*run) / "train_info.json").read_text())
        assert info["teacher_fingerprint"] == teacher["model_fingerprint"]
        cache = Path(info["teacher_cache"])
        assert (cache / "meta.json").is_file(), run
        history = json.loads((experiment.run_dir(*run) / "history.json").read_text())
        terms = {name for entry in history for name in entry["stats"] if name.startswith("kd_")}
        weights = yaml_value(RECIPE / "hparams" / "kd" / f"{run[2]}.yaml", "kd_weights")
        expected = {f"kd_{term}" for term in weights}
        assert terms == expected, run


def test_report_has_the_paper_table_and_the_similarity_figure(experiment: Experiment):
    report = (experiment.exp / "RESULTS.md").read_text()
    assert "## The paper's table" in report and "### student crnn" in report
    table, headline = report.split("### student crnn")[1].split("The paper's headline figure")
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")]
    # header, then the paper's methods in its order, then the others by name
    assert rows[1:] == ["none", *PAPER_METHODS, *sorted(MATRIX_METHODS)]
    pairs = [
        tuple(cell.strip() for cell in line.split("|")[1:3])
        for line in headline.splitlines()
        if line.startswith("| ")
    ]
    assert pairs == [
        ("methods", "micro-AUPRC"),
        ("IUSP vs SP", "coarse"),
        ("IUSP vs SP", "fine"),
        ("KD+IUSP vs KD+SP", "coarse"),
        ("KD+IUSP vs KD+SP", "fine"),
    ]
    assert "27.1 %–122.4 %" in headline
    assert (experiment.exp / "frame_similarity.png").read_bytes()[:8] == PNG_MAGIC
    assert "curves.png" in {p.name for p in experiment.run_dir(*RUNS[1]).iterdir()}


# ----- the same command again ---------------------------------------------------------------------
def test_rerun_retrains_and_reevaluates_nothing(experiment: Experiment, resumed):
    before, after, second = resumed
    assert second.returncode == 0, explain(second)
    assert after == before  # same manifests, checkpoints and results.json, same mtimes
    assert "SONYC-UST already prepared with these arguments" in second.stderr
    evaluated = re.findall(r"stage 7: (\S+) already evaluated", second.stdout)
    assert sorted(evaluated) == sorted(str(experiment.run_dir(*run)) for run in RUNS)
    assert second.stdout.rstrip().endswith("[run.sh] done")


# ----- stage 9, export (issue 17) -----------------------------------------------------------------
def test_stage_9_exports_the_student_and_its_files_score_the_pytorch_model(experiment: Experiment):
    """The stand-in's clips all last 4 s: the student alone still exports (parity on clips cut to
    several lengths) with int8; its fp32 files give the PyTorch model's coarse and fine
    micro-AUPRC on validate, one clip at a time; the int8 delta is reported; the same command
    again exports nothing."""
    command = [
        *experiment.command,
        "--methods",
        "",
        "--stage",
        "9",
        "--stop_stage",
        "9",
        "--quantize",
        "true",
    ]
    run_recipe(RECIPE, *command, timeout_s=TIMEOUT_S)
    run = experiment.run_dir("student", "crnn", "none")
    results = json.loads((run / "results.json").read_text())
    block = results["export"]
    assert len(set(block["parity"]["clip_samples"])) >= 3
    for name in ("coarse_micro_auprc", "fine_micro_auprc"):
        metric = block["metrics"][name]
        assert metric["stage_7"] == results["metrics"][name]
        for variant in ("torchscript", "onnx_fp32"):
            assert abs(metric[variant] - metric["eager"]) <= 1e-4, (name, variant)
        assert metric["int8_delta"] == pytest.approx(metric["onnx_int8"] - metric["onnx_fp32"])
    assert {"model.onnx", "model.int8.onnx", "export.json"} <= {p.name for p in run.iterdir()}
    again = run_recipe(RECIPE, *command, timeout_s=TIMEOUT_S)
    assert f"stage 9: {run} already exported" in again.stdout
