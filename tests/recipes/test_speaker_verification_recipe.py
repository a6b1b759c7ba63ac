"""End to end: the speaker-verification ``run.sh`` as a user types it, every stage 0-8.

``run.sh --standin true --dataset voxceleb1`` builds the VoxCeleb1-layout stand-in from the real
LibriSpeech / VCTK speech in ../shared/data (stage 0), prepares it, trains a tiny ECAPA teacher,
caches it (logit / embedding KD in one cache, each IML-KD variant with its integrated-gradients
maps in its own), trains the tiny student alone and with every method, verifies every run and
writes the report: one module-scoped run (1 epoch, 2 IG steps, 1 cached view) shared by the
tests. The score files are read back with plain string splitting and scored again with the
library's EER / minDCF; they must give the numbers results.json reports. The same command run a
second time must resume: nothing is prepared, cached, trained or evaluated again. An IML-KD
student without the cache (the live IntegratedTeacher) trains in a folder of its own.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import SPEAKER_VERIFICATION, run_recipe
from safetensors import safe_open
from speechbrain.lobes.features import Fbank

from kd_modules.metrics import eer_min_dcf
from kd_modules.results import REQUIRED_FIELDS
from kd_modules.stages.status import yaml_value

pytestmark = pytest.mark.slow

RECIPE = SPEAKER_VERIFICATION
ARCH = "ecapa_tiny"
BASELINES = ("kd", "embedding_cosine", "embedding_mse", "mlkd", "dkd")
IMLKD = ("imlkd", "imlkd_1s")
FEATURE_METHODS = ("fitnets", "sp", "iusp", "frami_reuse")  # the other recipes' (issue 19)
METHODS = (*BASELINES, *IMLKD, "imlkd_raw", *FEATURE_METHODS)
RUNS = [("teacher", ARCH, "none"), *(("student", ARCH, m) for m in ("none", *METHODS))]
EXTRA_ARGS = "--number_of_epochs 1 --num_workers 0 --ig_steps 2 --cache_views 1"
METRICS = ("eer", "min_dcf", "snorm_eer", "snorm_min_dcf", "asnorm_eer", "asnorm_min_dcf")
P_TARGET = 0.01  # common.yaml's p_target (VoxCeleb's minDCF setting)
N_MELS = 80
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TIMEOUT_S = 1500


@dataclass
class Experiment:
    root: Path
    proc: subprocess.CompletedProcess
    command: list[str]

    @property
    def exp(self) -> Path:
        return self.root / "exp" / "voxceleb1"

    @property
    def data(self) -> Path:
        return self.root / "data" / "voxceleb1"

    def run_dir(self, role: str, arch: str, method: str) -> Path:
        return self.exp / role / arch / method / "seed1"

    def json(self, run: tuple, name: str) -> dict:
        return json.loads((self.run_dir(*run) / name).read_text())


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"


def user_command(root: Path, exp_dir: Path, methods=METHODS, *extra: str) -> list[str]:
    """The one command of the recipe's README, on CPU, with tiny models and short runs."""
    return [
        "--python",
        sys.executable,
        "--standin",
        "true",
        "--dataset",
        "voxceleb1",
        "--device",
        "cpu",
        "--teacher",
        ARCH,
        "--students",
        ARCH,
        "--methods",
        " ".join(methods),
        "--data_dir",
        str(root / "data"),
        "--exp_dir",
        str(exp_dir),
        "--extra_args",
        EXTRA_ARGS,
        *extra,
    ]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, shared_data) -> Experiment:
    root = tmp_path_factory.mktemp("speaker_verification")
    command = user_command(root, root / "exp")
    proc = run_recipe(RECIPE, *command, timeout_s=TIMEOUT_S)
    return Experiment(root, proc, command)


def read_trial_lines(path: Path) -> list[tuple[int, str, str]]:
    """(label, enrol, test) of each line of a ``label enrol test`` file."""
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [(int(label), enrol, test) for label, enrol, test in rows]


def cache_tensors(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Shard file name -> {tensor name: tensor} of every shard of a teacher cache."""
    shards = {}
    for shard in sorted(folder.glob("shard-*.safetensors")):
        with safe_open(str(shard), "pt") as handle:
            shards[shard.name] = {key: handle.get_tensor(key) for key in handle.keys()}
    return shards


def fbank_frames(n_samples: int) -> int:
    """Frames of the recipe's 80-bin filterbank (25 ms windows, 10 ms hop) of n samples."""
    return Fbank(sample_rate=16000, n_mels=N_MELS)(torch.zeros(1, n_samples)).shape[1]


# ----- the run ------------------------------------------------------------------------------------
def test_every_stage_runs_in_order(experiment: Experiment):
    lines = [line for line in experiment.proc.stdout.splitlines() if "[run.sh] stage " in line]
    stages = [int(line.split("stage ")[1].split(":")[0]) for line in lines]
    assert stages == sorted(stages) and sorted(set(stages)) == list(range(9)), stages
    assert "building the stand-in tree" in experiment.proc.stdout
    assert experiment.proc.stdout.rstrip().endswith("[run.sh] done")


def test_trial_speakers_are_absent_from_training(experiment: Experiment):
    speakers = json.loads((experiment.data / "speakers.json").read_text())
    trials = read_trial_lines(experiment.data / "trials.txt")
    trial_speakers = {utt.split("/")[0] for _, enrol, test in trials for utt in (enrol, test)}
    assert len(trial_speakers) >= 2 and not trial_speakers & set(speakers)
    for split in ("train", "valid"):
        entries = json.loads((experiment.data / f"{split}.json").read_text()).values()
        assert {entry["spk_id"] for entry in entries} <= set(speakers), split
    test = json.loads((experiment.data / "test.json").read_text())
    assert {utt for _, enrol, test_utt in trials for utt in (enrol, test_utt)} <= set(test)


@pytest.mark.parametrize("run", RUNS, ids=lambda run: f"{run[0]}-{run[2]}")
def test_results_json(experiment: Experiment, run):
    results = experiment.json(run, "results.json")
    assert not [name for name in REQUIRED_FIELDS if name not in results]
    assert (results["task"], results["dataset"]) == ("speaker_verification", "voxceleb1")
    assert (results["role"], results["arch"], results["method"]) == run
    assert sorted(results["metrics"]) == sorted(METRICS)
    assert all(math.isfinite(value) for value in results["metrics"].values())
    assert all(0.0 <= results["metrics"][f"{p}eer"] <= 1.0 for p in ("", "snorm_", "asnorm_"))
    assert all(results["metrics"][f"{p}min_dcf"] >= 0.0 for p in ("", "snorm_", "asnorm_"))
    n_trials = len(read_trial_lines(experiment.data / "trials.txt"))
    assert (results["trials"], results["skipped_trials"]) == (n_trials, 0)  # all readable
    speakers = json.loads((experiment.data / "speakers.json").read_text())
    assert 0 < results["cohort_speakers"] <= len(speakers)
    assert experiment.json(run, "train_info.json")["finished"]


@pytest.mark.parametrize("run", RUNS, ids=lambda run: f"{run[0]}-{run[2]}")
def test_score_files_reproduce_the_reported_rates(experiment: Experiment, run):
    results = experiment.json(run, "results.json")
    trials = read_trial_lines(experiment.data / "trials.txt")
    assert sorted(results["scores"]) == ["asnorm", "raw", "snorm"]
    for kind, path in results["scores"].items():
        rows = [line.split() for line in Path(path).read_text().splitlines()]
        assert Path(path).parent == experiment.run_dir(*run) and len(rows) == results["trials"]
        assert all(len(row) == 4 for row in rows), f"{path}: not 'label score enrol test'"
        assert [(int(r[0]), r[2], r[3]) for r in rows] == trials  # every trial, in order
        labels = torch.tensor([int(row[0]) for row in rows])
        scores = torch.tensor([float(row[1]) for row in rows], dtype=torch.float32)
        rates = eer_min_dcf(scores[labels == 1], scores[labels == 0], P_TARGET)
        prefix = "" if kind == "raw" else f"{kind}_"
        assert rates["eer"] == pytest.approx(results["metrics"][f"{prefix}eer"], abs=1e-9)
        assert rates["min_dcf"] == pytest.approx(results["metrics"][f"{prefix}min_dcf"], abs=1e-9)


# ----- the teacher cache --------------------------------------------------------------------------
def test_kd_students_were_distilled_from_the_reported_teacher(experiment: Experiment):
    teacher = experiment.json(RUNS[0], "results.json")["model_fingerprint"]
    for run in RUNS[2:]:
        info = experiment.json(run, "train_info.json")
        assert info["teacher_fingerprint"] == teacher, run  # IML-KD's too: the same model
        assert experiment.json(run, "results.json")["teacher_fingerprint"] == teacher, run
        assert (Path(info["teacher_cache"]) / "meta.json").is_file(), run
        history = experiment.json(run, "history.json")
        terms = {name for entry in history for name in entry["stats"] if name.startswith("kd_")}
        weights = yaml_value(RECIPE / "hparams" / "kd" / f"{run[2]}.yaml", "kd_weights")
        assert terms == {f"kd_{term}" for term in weights}, run
        assert all(entry["stats"]["loss"] > 0 for entry in history), run
    assert "†" not in (experiment.exp / "RESULTS.md").read_text()


def test_each_imlkd_variant_has_its_own_cache_and_logit_kd_another(experiment: Experiment):
    caches = {
        m: experiment.json(("student", ARCH, m), "train_info.json")["teacher_cache"]
        for m in METHODS
    }
    shared = {caches[m] for m in (*BASELINES, "imlkd_raw")}
    assert len(shared) == 1  # the raw teacher's outputs serve every non-integrated method
    assert len({caches["imlkd"], caches["imlkd_1s"], *shared}) == 3
    tapped = {caches[m] for m in FEATURE_METHODS}  # hint; frames (SP and IUSP); pre and post
    assert len(tapped) == 3 and not tapped & {caches["imlkd"], caches["imlkd_1s"], *shared}
    for method, folder in caches.items():
        names = json.loads((Path(folder) / "meta.json").read_text())["names"]
        assert ("ig_weight" in names) == (method in IMLKD), method


@pytest.mark.parametrize("method", IMLKD)
def test_imlkd_cache_holds_an_ig_weight_per_cached_crop(experiment: Experiment, method):
    folder = Path(experiment.json(("student", ARCH, method), "train_info.json")["teacher_cache"])
    crop = json.loads((folder / "meta.json").read_text())["augmentation"]["crop_samples"]
    segments = json.loads((experiment.data / "train.json").read_text())
    tensors = {k: v for shard in cache_tensors(folder).values() for k, v in shard.items()}
    assert sorted({key.split("/0/")[0] for key in tensors}) == sorted(segments)
    for utt, entry in segments.items():
        weight, params = tensors[f"{utt}/0/ig_weight"], tensors[f"{utt}/0/__params__"]
        length = min(entry["stop"] - entry["start"], crop)
        assert weight.shape == (fbank_frames(length), N_MELS), utt
        assert 0 <= int(params[0]) <= entry["stop"] - entry["start"] - length  # the crop start
        weight = weight.float()
        assert torch.isfinite(weight).all() and weight.min() >= 0 and 0.1 < weight.max() <= 1
        assert tensors[f"{utt}/0/embedding"].shape == (64,)  # the tiny teacher's embedding


# ----- the report ---------------------------------------------------------------------------------
def test_report_has_the_table_the_imlkd_comparison_and_the_figure(experiment: Experiment):
    report = (experiment.exp / "RESULTS.md").read_text()
    rows = [line.split("|") for line in report.splitlines() if line.startswith("| voxceleb1 |")]
    assert sorted((r[2].strip(), r[4].strip()) for r in rows) == sorted((r[0], r[2]) for r in RUNS)
    assert report.count("## IML-KD against the KD baselines") == 1
    section = report.split("## IML-KD against the KD baselines")[1]
    assert f"### Student {ARCH}" in section
    methods = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")]
    assert sorted(methods[1:]) == sorted(("none", *METHODS))  # header, then one row per method
    eer = {
        m: experiment.json(("student", ARCH, m), "results.json")["metrics"]["eer"] for m in METHODS
    }
    best = min(BASELINES, key=eer.get)
    change = 100 * (eer["imlkd"] - eer[best]) / eer[best]
    line = re.search(
        r"IML-KD vs the best baseline \((\w+)\): relative EER change \*\*(.+?) %\*\*", section
    )
    assert line is not None, section
    assert (line.group(1), line.group(2)) == (best, f"{change:+.1f}")
    figure = experiment.exp / "integrated_gradients.png"
    assert figure.read_bytes()[:8] == PNG_MAGIC and figure.stat().st_size > 10_000
    assert "integrated_gradients.png" in report


# ----- the same command again ---------------------------------------------------------------------
def saved_state(experiment: Experiment) -> dict[str, int]:
    """Path -> mtime of the stand-in's trial list, the manifests, every teacher-cache file and
    each run's train_info.json, results.json, score files and checkpoints."""
    paths = [experiment.root / "data" / "standin" / "veri_test2.txt"]
    paths += [*experiment.data.glob("*.json"), experiment.data / ".done"]
    paths += sorted((experiment.root / "exp" / "cache").rglob("*"))
    for run in RUNS:
        folder = experiment.run_dir(*run)
        paths += [folder / "train_info.json", folder / "results.json", *folder.glob("scores*")]
        paths += sorted((folder / "save").rglob("*"))
    kept = [path for path in paths if not path.name.startswith(".lock")]  # touched by any look
    return {str(path): path.stat().st_mtime_ns for path in kept}


@pytest.fixture(scope="module")
def resumed(experiment: Experiment) -> tuple[dict, dict, subprocess.CompletedProcess]:
    """The same command again: the saved state before and after, and the second run."""
    before = saved_state(experiment)
    second = run_recipe(RECIPE, *experiment.command, timeout_s=TIMEOUT_S, check=False)
    return before, saved_state(experiment), second


def test_rerun_retrains_and_reevaluates_nothing(experiment: Experiment, resumed):
    before, after, second = resumed
    assert second.returncode == 0, explain(second)
    assert after == before  # same stand-in, manifests, cache, checkpoints, results: same mtimes
    assert "building the stand-in tree" not in second.stdout
    assert "voxceleb1 already prepared with these arguments" in second.stdout + second.stderr
    evaluated = re.findall(r"stage 7: (\S+) already evaluated", second.stdout)
    assert sorted(evaluated) == sorted(str(experiment.run_dir(*run)) for run in RUNS)
    report = (experiment.exp / "RESULTS.md").read_text()
    assert report.count("## IML-KD against the KD baselines") == 1  # rewritten, not appended
    assert second.stdout.rstrip().endswith("[run.sh] done")


def test_stop_after_prepare_runs_no_later_stage(experiment: Experiment, resumed):
    """``--stop_stage 1`` (prepare, then look at the data): stages 2-7 and their arguments (the
    speaker count of the manifests) are never touched."""
    proc = run_recipe(RECIPE, *experiment.command, "--stop_stage", "1", timeout_s=TIMEOUT_S)
    assert "unbound variable" not in proc.stderr, proc.stderr[-2000:]
    stages = re.findall(r"\[run\.sh\] stage (\d+)", proc.stdout)
    assert sorted(set(stages)) == ["0", "1"], proc.stdout[-2000:]


# ----- IML-KD without the cache -------------------------------------------------------------------
def test_imlkd_student_trains_with_the_live_integrated_teacher(experiment: Experiment, tmp_path):
    """``--use_cache false``: the IntegratedTeacher attributes every batch during training."""
    teacher = experiment.run_dir(*RUNS[0])
    live_exp = tmp_path / "exp"
    shutil.copytree(teacher, live_exp / teacher.relative_to(experiment.root / "exp"))
    command = user_command(
        experiment.root,
        live_exp,
        ["imlkd"],
        "--use_cache",
        "false",
        "--stage",
        "5",
        "--stop_stage",
        "5",
    )
    run_recipe(RECIPE, *command, timeout_s=TIMEOUT_S)
    student = live_exp / "voxceleb1" / "student" / ARCH / "imlkd" / "seed1"
    info = json.loads((student / "train_info.json").read_text())
    assert info["finished"] and info["teacher_cache"] is None
    teacher_results = experiment.json(RUNS[0], "results.json")
    assert info["teacher_fingerprint"] == teacher_results["model_fingerprint"]
    assert not (live_exp / "cache").exists()  # stage 3 skipped, nothing cached on the way
    history = json.loads((student / "history.json").read_text())
    train = [entry["stats"] for entry in history if entry["stage"] == "train"]
    assert len(train) == 1 and math.isfinite(train[0]["kd_mlkd"]) and train[0]["kd_mlkd"] > 0


# ----- stage 9, export (issue 17) -----------------------------------------------------------------
def test_stage_9_exports_the_student_and_its_embeddings_give_stage_7s_eer(experiment: Experiment):
    """The student alone exported with int8: the EER of the trial list from its fp32 files'
    embeddings equals the PyTorch model's, and stage 7's (which embeds one utterance at a time
    too); the int8 delta is reported."""
    command = [
        *user_command(experiment.root, experiment.root / "exp", ()),
        "--stage",
        "9",
        "--stop_stage",
        "9",
        "--quantize",
        "true",
    ]
    run_recipe(RECIPE, *command, timeout_s=TIMEOUT_S)
    results = experiment.json(("student", ARCH, "none"), "results.json")
    eer = results["export"]["metrics"]["eer"]
    assert eer["stage_7"] == results["metrics"]["eer"]
    for variant in ("stage_7", "torchscript", "onnx_fp32"):
        assert abs(eer[variant] - eer["eager"]) <= 1e-4, variant
    assert eer["int8_delta"] == pytest.approx(eer["onnx_int8"] - eer["onnx_fp32"])
    assert (
        results["export"]["test_clips"]
        == len(json.loads((experiment.data / "test.json").read_text()))
        - results["export"]["skipped_test_clips"]
    )
