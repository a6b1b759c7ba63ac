"""Stage 9 (kd_modules.stages.export): an evaluated run is exported, its test metric recomputed from
the exported files' outputs (fp32 equal to results.json's, int8 with its delta) and written to
results.json's export block, its output checksums kept; a run whose parity or metric fails is not
marked exported; "exported" is what run.sh asks (kd_modules.stages.status exported); the stage-8
table shows the exported files' latency and size; TensorBoard events of a tiny real run.

The slow tests share one real run: the sound recipe's x-vector student trained one epoch on real
FSDD clips and evaluated by its train.py, as stages 4 and 7 leave it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
from conftest import FSDD_CLIPS, REPO, write_fsdd_manifests
from hyperpyyaml import load_hyperpyyaml, resolve_references

import kd_modules.export.run as export_module
from kd_modules.checkpoints import Checkpointer
from kd_modules.export import export_run
from kd_modules.export.snippets import snippet
from kd_modules.hparams import compose_yaml
from kd_modules.outputs import (
    EXPORT_BLOCK,
    OUTPUT_RECORD,
    not_evaluated_reason,
    not_exported_reason,
)
from kd_modules.results import write_results
from kd_modules.stages.export import (
    METRIC_TOLERANCE,
    EvaluationData,
    ExportRefused,
    export_and_score,
)
from kd_modules.tables import results_table

SOUND = REPO / "recipes" / "sound_classification"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
FILES = {
    "torchscript": "model.torchscript.pt",
    "onnx": "model.onnx",
    "onnx_int8": "model.int8.onnx",
}


def _results(accuracy: float = 0.5, method: str = "kd", seed: int = 1) -> dict:
    """The results.json fields of a sound-classification student."""
    return {
        "task": "sound_classification",
        "dataset": "fsdd",
        "role": "student",
        "method": method,
        "arch": "xvector_small",
        "seed": seed,
        "fold": 1,
        "metrics": {"accuracy": accuracy},
        "params": 55_000,
        "macs": 2_000_000,
        "latency_ms": 1.0,
        "checkpoint": "run/save/CKPT+1",
        "selection": "best valid",
        "teacher_fingerprint": None,
        "versions": {},
        "git_commit": "x",
        "wall_time_s": 1.0,
    }


def _block(run_dir: Path, roles, one_thread: dict | None = None) -> dict:
    """An export block naming the files ``roles`` (written here) and export.json."""
    files = {}
    for role in (*roles, "export_json"):
        name = FILES.get(role, "export.json")
        (run_dir / name).write_bytes(f"{role} bytes".encode() * 1000)
        files[role] = {
            "name": name,
            "sha256": _sha256(run_dir / name),
            "bytes": (run_dir / name).stat().st_size,
        }
    block = {"checkpoint": "elsewhere/save/CKPT+1", "files": files}
    if one_thread is not None:
        block["latency_ms_per_audio_second"] = {"one_thread": one_thread}
    return block


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def evaluated(tmp_path: Path) -> Path:
    """A run folder trained, then evaluated (train_info.json older than results.json)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "train_info.json").write_text("{}")
    os.utime(run_dir / "train_info.json", (1e9, 1e9))
    write_results(run_dir / "results.json", _results())
    return run_dir


def _add_block(run_dir: Path, block: dict) -> None:
    results = json.loads((run_dir / "results.json").read_text())
    (run_dir / "results.json").write_text(json.dumps({**results, EXPORT_BLOCK: block}))


# ----- "exported": what run.sh asks before launching stage 9 ------------------------------------
def test_a_run_is_exported_while_every_file_its_block_names_is_unchanged(evaluated):
    assert not_exported_reason(evaluated) == "not exported yet"
    _add_block(evaluated, _block(evaluated, ("torchscript", "onnx")))
    assert not_exported_reason(evaluated) is None  # the checkpoint folder's name is compared
    assert not_exported_reason(evaluated, int8=True) == "exported without an int8 model"
    (evaluated / "model.onnx").write_bytes(b"changed")
    assert not_exported_reason(evaluated) == "model.onnx changed since it was exported"
    (evaluated / "export.json").unlink()
    (evaluated / "model.onnx").unlink()
    assert not_exported_reason(evaluated) in ("model.onnx is missing", "export.json is missing")


def test_a_run_evaluated_again_or_exported_from_another_checkpoint_is_not_exported(evaluated):
    block = _block(evaluated, ("torchscript", "onnx", "onnx_int8"))
    _add_block(evaluated, {**block, "checkpoint": "run/save/CKPT+2"})
    assert not_exported_reason(evaluated) == (
        "exported from another checkpoint than the one evaluated"
    )
    write_results(evaluated / "results.json", _results())  # stage 7 writes it again: no block
    assert not_exported_reason(evaluated, int8=True) == "not exported yet"
    (evaluated / "train_info.json").touch()  # trained again since
    assert not_exported_reason(evaluated).startswith("not evaluated: trained again")


def test_status_exported_answers_run_sh_with_its_exit_status(evaluated):
    _add_block(evaluated, _block(evaluated, ("torchscript", "onnx")))

    def exported(*extra: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "kd_modules.stages.status", "exported", str(evaluated)]
        return subprocess.run(
            [*command, *extra], env=ENV, capture_output=True, text=True, timeout=60
        )

    assert exported().returncode == 0 and exported("--quantize", "false").stdout == ""
    refused = exported("--quantize", "true")
    assert refused.returncode == 1 and refused.stdout == "exported without an int8 model\n"


# ----- the stage-8 table --------------------------------------------------------------------------
def test_results_table_shows_the_exported_files_latency_and_size_only_when_exported(tmp_path):
    for seed in (1, 2):
        write_results(tmp_path / f"kd/seed{seed}/results.json", _results(0.8, "kd", seed))
    write_results(tmp_path / "none/seed1/results.json", _results(0.5, "none"))
    runs = [json.loads(p.read_text()) for p in sorted(tmp_path.rglob("results.json"))]
    assert "ONNX ms/s" not in results_table(runs)
    for seed, (fp32, int8) in zip((1, 2), ((2.0, 1.0), (4.0, 1.5))):
        run_dir = tmp_path / f"kd/seed{seed}"
        block = _block(run_dir, ("onnx", "onnx_int8"), {"onnx_fp32": fp32, "onnx_int8": int8})
        _add_block(run_dir, block)
    runs = [json.loads(p.read_text()) for p in sorted(tmp_path.rglob("results.json"))]
    lines = results_table(runs).splitlines()
    assert lines[0].endswith("| epoch s | ONNX ms/s | int8 ms/s | ONNX MB | int8 MB |")
    kd_row = next(line for line in lines if "| kd |" in line)
    size = (tmp_path / "kd/seed1/model.onnx").stat().st_size / 1e6
    size_int8 = (tmp_path / "kd/seed1/model.int8.onnx").stat().st_size / 1e6
    assert kd_row.endswith(f"| 3.00 ± 1.41 | 1.25 ± 0.35 | {size:.2f} | {size_int8:.2f} |")
    none_row = next(line for line in lines if "| none |" in line)
    assert none_row.endswith("| – | – | – | – |")  # not exported
    assert "ONNX Runtime CPU latency on one thread" in lines[-1]


# ----- a real run: stages 4 and 7 of the sound recipe, then stage 9 -----------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A one-epoch x-vector student on real FSDD clips (20 train, 10 valid, 20 test), trained
    and evaluated by the recipe's train.py with TensorBoard on; returns (data, run folder)."""
    root = tmp_path_factory.mktemp("stage9")
    data = write_fsdd_manifests(root / "data" / "fold1", {"train": 2, "valid": 1, "test": 2})
    (data.parent / "labels.json").write_text(json.dumps([str(d) for d in range(10)]))
    (data.parent / ".done").write_text(json.dumps({"dataset": "fsdd"}))
    run_dir = root / "run"
    command = [
        sys.executable,
        "train.py",
        "hparams/common.yaml",
        "hparams/student/xvector_small.yaml",
        "hparams/kd/none.yaml",
        "--data_folder",
        str(data),
        "--output_folder",
        str(run_dir),
        "--n_classes",
        "10",
        "--exp_root",
        str(root / "exp"),
        "--device",
        "cpu",
        "--number_of_epochs",
        "1",
        "--num_workers",
        "0",
        "--augment",
        "False",
        "--tensorboard",
        "True",
    ]
    done = subprocess.run(command, cwd=SOUND, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return data, run_dir


def _copy(trained, tmp_path: Path) -> tuple[EvaluationData, Path]:
    """A copy of the trained run (its results.json as stage 7 wrote it) and its test data."""
    data, run_dir = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    os.utime(copy / "results.json")  # newer than train_info.json, as in the original
    return EvaluationData(data / "test.json", data.parent / "labels.json"), copy


@pytest.mark.slow
def test_stage_9_writes_the_export_block_with_the_exported_files_metrics(trained, tmp_path):
    test, run_dir = _copy(trained, tmp_path)
    before = json.loads((run_dir / "results.json").read_text())
    block = export_and_score(
        run_dir,
        test,
        quantize=True,
        calibration_manifest=test.manifest.parent / "train.json",
        latency_repeats=2,
    )
    results = json.loads((run_dir / "results.json").read_text())
    assert results[EXPORT_BLOCK] == block
    assert {k: v for k, v in results.items() if k != EXPORT_BLOCK} == before  # nothing else
    assert results[OUTPUT_RECORD] == before[OUTPUT_RECORD]
    assert not_evaluated_reason(run_dir) is None  # stage 7 does not evaluate it again
    assert not_exported_reason(run_dir, int8=True) is None
    accuracy = block["metrics"]["accuracy"]
    assert accuracy["stage_7"] == before["metrics"]["accuracy"]
    for variant in ("stage_7", "torchscript", "onnx_fp32"):  # accuracy does not turn on rounding
        assert abs(accuracy[variant] - accuracy["eager"]) <= METRIC_TOLERANCE, variant
    assert accuracy["int8_delta"] == pytest.approx(accuracy["onnx_int8"] - accuracy["onnx_fp32"])
    assert block["test_clips"] == 20 and block["skipped_test_clips"] == 0
    export_json = json.loads((run_dir / "export.json").read_text())
    assert {role: block["files"][role] for role in FILES} == export_json["files"]
    assert block["files"]["onnx_int8"]["bytes"] == (run_dir / "model.int8.onnx").stat().st_size
    assert set(block["latency_ms_per_audio_second"]["one_thread"]) == {
        "eager",
        "torchscript",
        "onnx_fp32",
        "onnx_int8",
    }
    assert block["parity"]["onnxruntime"]["batched"] <= 1e-4
    assert set(block["int8"]["max_abs_difference"]) == {"batched", "alone"}


@pytest.mark.slow
def test_a_run_whose_parity_fails_is_not_marked_exported(trained, tmp_path, monkeypatch):
    test, run_dir = _copy(trained, tmp_path)
    original = export_module.reference_outputs
    monkeypatch.setattr(export_module, "reference_outputs", lambda *a: original(*a) + 1e-3)
    with pytest.raises(ExportRefused, match=r"is not exported: exported outputs differ"):
        export_and_score(run_dir, test, latency_repeats=0)
    assert not (run_dir / "export.json").exists()
    assert EXPORT_BLOCK not in json.loads((run_dir / "results.json").read_text())
    assert not_exported_reason(run_dir) == "not exported yet"


@pytest.mark.slow
def test_a_file_that_scores_otherwise_than_the_pytorch_model_is_not_exported(
    trained, tmp_path, monkeypatch
):
    """An ONNX file right on the parity clips but not on the rest of the test split (simulated:
    its scoring runner reverses the class order) is refused in one line naming the variant and
    both accuracies; no export.json, no block."""
    import kd_modules.stages.export as stage

    test, run_dir = _copy(trained, tmp_path)
    original = stage.onnx_runner
    monkeypatch.setattr(stage, "onnx_runner", lambda s: lambda *a: original(s)(*a)[:, ::-1])
    with pytest.raises(ExportRefused) as refusal:
        export_and_score(run_dir, test, latency_repeats=0)
    message = str(refusal.value)
    assert message.startswith(
        f"{run_dir} is not exported: the fp32 files' test metric differs "
        "from the PyTorch model's by more than 0.0001: onnx_fp32 accuracy"
    )
    assert "torchscript" not in message  # the TorchScript file scores as PyTorch does
    assert not (run_dir / "export.json").exists()
    assert EXPORT_BLOCK not in json.loads((run_dir / "results.json").read_text())


@pytest.mark.slow
def test_stage_7s_own_figure_is_reported_beside_the_pytorch_models(trained, tmp_path):
    """results.json's accuracy is stage 7's batched evaluation: when it differs from the PyTorch
    model's one clip at a time (here: edited), the export goes ahead against the latter, the
    block keeps both and the command says so."""
    test, run_dir = _copy(trained, tmp_path)
    results = json.loads((run_dir / "results.json").read_text())
    results["metrics"]["accuracy"] += 0.05
    (run_dir / "results.json").write_text(json.dumps(results))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kd_modules.stages.export",
            str(run_dir),
            "--test_manifest",
            str(test.manifest),
            "--labels_file",
            str(test.labels_file),
            "--latency_repeats",
            "0",
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    accuracy = json.loads((run_dir / "results.json").read_text())[EXPORT_BLOCK]["metrics"]
    accuracy = accuracy["accuracy"]
    assert accuracy["stage_7"] == results["metrics"]["accuracy"]
    assert accuracy["onnx_fp32"] == accuracy["eager"] == pytest.approx(accuracy["stage_7"] - 0.05)
    assert (
        f"accuracy: PyTorch one clip at a time {accuracy['eager']:.4f}, stage 7's batches "
        f"{accuracy['stage_7']:.4f}; the exported files score the former"
    ) in proc.stderr


@pytest.mark.slow
def test_another_test_manifest_than_results_json_names_is_refused(trained, tmp_path):
    test, run_dir = _copy(trained, tmp_path)
    other = EvaluationData(test.manifest.parent / "valid.json", test.labels_file)
    with pytest.raises(ExportRefused, match=r"was evaluated on .*test.json, not on .*valid.json"):
        export_and_score(run_dir, other, latency_repeats=0)
    assert not (run_dir / "export.json").exists()


@pytest.mark.slow
def test_a_checkpoint_other_than_the_evaluated_one_is_not_exported(trained, tmp_path):
    """results.json naming another checkpoint than the run's best one now (it trained on after
    stage 7): refused, and the export.json written on the way removed."""
    test, run_dir = _copy(trained, tmp_path)
    results = json.loads((run_dir / "results.json").read_text())
    results["checkpoint"] = str(run_dir / "save" / "CKPT+an-older-one")
    (run_dir / "results.json").write_text(json.dumps(results))
    with pytest.raises(ExportRefused, match=r"results.json evaluated CKPT\+an-older-one, the best"):
        export_and_score(run_dir, test, latency_repeats=0)
    assert not (run_dir / "export.json").exists()
    assert EXPORT_BLOCK not in json.loads((run_dir / "results.json").read_text())


@pytest.mark.slow
def test_an_unevaluated_run_is_refused_with_one_line(trained, tmp_path):
    test, run_dir = _copy(trained, tmp_path)
    (run_dir / "results.json").unlink()
    with pytest.raises(
        ExportRefused, match=r"is not evaluated \(no results.json yet\): run stage 7"
    ):
        export_and_score(run_dir, test)


@pytest.mark.slow
def test_tensorboard_writes_each_epochs_curves_under_the_run_folder(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run_dir = trained
    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events, f"no event file under {run_dir / 'tensorboard'}"
    accumulator = EventAccumulator(str(run_dir / "tensorboard"))
    accumulator.Reload()
    scalars = {tag: accumulator.Scalars(tag) for tag in accumulator.Tags()["scalars"]}
    assert {"lr", "loss/train", "ce/train", "loss/valid", "accuracy/valid", "accuracy/test"} <= set(
        scalars
    )
    assert all([event.step for event in values] == [1] for values in scalars.values())
    history = json.loads((run_dir / "history.json").read_text())
    valid = next(entry for entry in history if entry["stage"] == "valid")
    assert scalars["accuracy/valid"][0].value == pytest.approx(valid["stats"]["accuracy"])
    test_accuracy = json.loads((run_dir / "results.json").read_text())["metrics"]["accuracy"]
    assert scalars["accuracy/test"][0].value == pytest.approx(test_accuracy)


# ----- clips all of one length (SONYC-UST's 10 s) ---------------------------------------------
def _finished_student(tmp_path: Path) -> Path:
    """A sound-classification student's run folder as training leaves it: the resolved
    hyperparams.yaml and a checkpoint (untrained weights)."""
    hparams = SOUND / "hparams"
    files = [
        hparams / "common.yaml",
        hparams / "student/xvector_small.yaml",
        hparams / "kd/none.yaml",
    ]
    overrides = {
        "data_folder": str(tmp_path),
        "output_folder": str(tmp_path / "run"),
        "n_classes": 10,
    }
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    text = resolve_references(compose_yaml(files), overrides).getvalue()
    (run_dir / "hyperparams.yaml").write_text(text)
    model = load_hyperpyyaml(text)["model"]
    Checkpointer(run_dir / "save", {"model": model}).save_checkpoint(meta={"accuracy": 1.0})
    return run_dir


def test_clips_of_one_length_are_cut_to_varied_lengths_for_export_and_parity(tmp_path):
    """A test split whose clips all have one length (real FSDD digits cut to the shortest, as
    SONYC-UST's are all 10 s) still gives a traced example with padding and parity on three
    lengths or more: each clip but the last is cut shorter."""
    digits = sorted(FSDD_CLIPS.glob("*.flac"))[:12]
    shortest = min(sf.info(str(path)).frames for path in digits)
    entries = {}
    for path in digits:
        wav, rate = sf.read(str(path), dtype="float32")
        sf.write(tmp_path / f"{path.stem}.wav", wav[:shortest], rate)
        entries[path.stem] = {
            "wav": str(tmp_path / f"{path.stem}.wav"),
            "duration": shortest / rate,
        }
    (tmp_path / "test.json").write_text(json.dumps(entries))
    record = export_run(
        _finished_student(tmp_path),
        "sound_classification",
        tmp_path / "test.json",
        latency_repeats=0,
    )
    lengths = record["parity"]["clip_samples"]
    assert len(set(lengths)) == len(lengths) == 6 and max(lengths) == shortest
    assert all(length % 160 for length in lengths[:-1])  # off the hop grid
    assert record["parity"]["onnxruntime"]["batched"] <= 1e-4


# ----- the recipe READMEs ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "recipe", ["sound_classification", "audio_tagging", "speaker_verification"]
)
def test_each_readme_shows_the_snippet_that_runs_without_torch(recipe):
    """The README's snippet is, character for character, kd_modules.export.snippets.snippet(task):
    the text tests/unit/test_export.py runs in an interpreter that never imports torch."""
    readme = (REPO / "recipes" / recipe / "README.md").read_text()
    assert f"```python\n{snippet(recipe)}```" in readme
    assert "--stage 9 --stop_stage 9" in readme  # the export command
