"""Export (kd_modules.export): the deployable front end equals SpeechBrain's features, every
student architecture of every recipe exports to TorchScript and ONNX with its outputs equal to the
PyTorch model's on real clips (batched with padding and alone), a parity failure raises,
export.json describes the files, the int8 model runs, and the README snippet runs without torch.
"""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch
from run_folders import (
    FSDD,
    RATE,
    SIZE_KEYS,
    finished_run,
    real_clips,
    recipe_files,
    run_overrides,
)

from kd_modules.export import (
    DeployableFrontEnd,
    DeployedModel,
    ParityError,
    check_parity,
    export_run,
)
from kd_modules.export.formats import example_batch, export_onnx, export_torchscript
from kd_modules.export.parity import reference_outputs
from kd_modules.export.quantize import quantise
from kd_modules.export.runtime import load_torchscript, onnx_runner, onnx_session, torch_runner
from kd_modules.export.snippets import snippet
from kd_modules.hparams import load_composed

STUDENTS = [
    ("sound_classification", "student/xvector_small"),
    ("audio_tagging", "student/cnn_small"),
    ("audio_tagging", "student/cnn_medium"),
    ("audio_tagging", "student/crnn"),
    ("speaker_verification", "student/ecapa_tiny"),
    ("speaker_verification", "student/ecapa_c256"),
    ("speaker_verification", "student/ecapa_c512"),
]
TEACHERS = [
    ("sound_classification", "teacher/xvector_large"),
    ("sound_classification", "teacher/cnn"),
    ("sound_classification", "teacher/ensemble"),
    ("audio_tagging", "teacher/cnn10"),
    ("speaker_verification", "teacher/ecapa_tiny"),
    ("speaker_verification", "teacher/ecapa_c1024"),
]


def _recipe(tmp_path: Path, recipe: str, arch: str) -> dict:
    torch.manual_seed(0)
    overrides = run_overrides(tmp_path, recipe, tmp_path / "data", 10)
    return load_composed(recipe_files(recipe, arch), overrides)


def _speechbrain_float64(front_end):
    """A copy of SpeechBrain's front end that runs in float64 (its window and Mel settings)."""
    front_end = copy.deepcopy(front_end)
    stft, fbanks = front_end.features.compute_STFT, front_end.features.compute_fbanks
    stft.window = stft.window.double()
    for name in ("f_central", "band", "all_freqs_mat"):
        setattr(fbanks, name, getattr(fbanks, name).double())
    return front_end


def _alone(module, clip: torch.Tensor):
    return module(clip[None], torch.tensor([clip.numel()]))


@pytest.mark.parametrize("recipe", sorted(SIZE_KEYS))
def test_deployable_front_end_equals_speechbrain_on_real_clips(tmp_path, recipe):
    """Each recipe's settings (40/64/80 Mel bands, 25 ms / 10 ms): with torch.stft the features
    equal SpeechBrain's to 1e-5; with the DFT convolution they are as close to SpeechBrain's
    exact (float64) features as SpeechBrain's own float32 features are; in a padded batch each
    clip has its own frame count and its frames alone, to float32 round-off (a batched FFT or
    convolution rounds the quietest bins differently; bounded by SpeechBrain's own error)."""
    arch = {
        "sound_classification": "student/xvector_small",
        "audio_tagging": "student/crnn",
        "speaker_verification": "student/ecapa_tiny",
    }[recipe]
    front_end = _recipe(tmp_path, recipe, arch)["front_end"]
    exact = _speechbrain_float64(front_end)
    stft, conv = DeployableFrontEnd(front_end, "stft"), DeployableFrontEnd(front_end, "conv")
    clips = real_clips()
    own_error = conv_error = 0.0
    for clip in clips:
        reference = front_end(clip[None], torch.ones(1))
        float64 = exact(clip[None].double(), torch.ones(1))
        torch.testing.assert_close(_alone(stft, clip)[0], reference, atol=1e-5, rtol=0)
        own_error = max(own_error, (reference.double() - float64).abs().max().item())
        conv_error = max(conv_error, (_alone(conv, clip)[0].double() - float64).abs().max().item())
    assert conv_error <= 2 * own_error, (conv_error, own_error)
    wavs, lengths = example_batch(clips)
    for module in (stft, conv):
        feats, frame_lens = module(wavs, lengths)
        expected = front_end.frame_lengths(lengths / wavs.shape[1], wavs.shape[1], feats.shape[1])
        assert torch.equal(frame_lens, expected)
        for row, clip in enumerate(clips):
            alone = _alone(module, clip)[0][0]
            torch.testing.assert_close(
                feats[row, : alone.shape[0]], alone, atol=2 * own_error, rtol=0
            )


def _export_and_check(tmp_path: Path, recipe: str, arch: str) -> dict:
    """Export the recipe's model as TorchScript and ONNX and check both against the PyTorch
    model on real clips of four lengths, batched and alone (goal 1e-4)."""
    hparams = _recipe(tmp_path, recipe, arch)
    model, front_end = hparams["model"].eval(), hparams["front_end"]
    clips = real_clips()
    example = example_batch([clips[2], clips[1]])
    scripted = DeployedModel(DeployableFrontEnd(front_end, "stft"), model, recipe)
    deployed = DeployedModel(DeployableFrontEnd(front_end, "conv"), model, recipe)
    export_torchscript(scripted, tmp_path / "model.pt", example)
    export_onnx(deployed, tmp_path / "model.onnx", example, deployed.output_name)
    runners = {
        "torchscript": torch_runner(load_torchscript(tmp_path / "model.pt")),
        "onnxruntime": onnx_runner(onnx_session(tmp_path / "model.onnx", threads=1)),
    }
    return check_parity(runners, clips, reference_outputs(front_end, model, recipe, clips))


@pytest.mark.parametrize("recipe, arch", STUDENTS)
def test_every_student_exports_with_parity_batched_and_alone(tmp_path, recipe, arch):
    report = _export_and_check(tmp_path, recipe, arch)
    assert set(report) == {"torchscript", "onnxruntime"}
    assert all(error <= 1e-4 for errors in report.values() for error in errors.values())


@pytest.mark.slow
@pytest.mark.parametrize("recipe, arch", TEACHERS)
def test_every_teacher_exports_with_parity_batched_and_alone(tmp_path, recipe, arch):
    report = _export_and_check(tmp_path, recipe, arch)
    assert all(error <= 1e-4 for errors in report.values() for error in errors.values())


def test_deployed_model_is_deterministic_and_ignores_padding(tmp_path):
    """SpeechBrain's statistics pooling adds random noise in eval mode; the deployed x-vector
    gives identical outputs on every call, and a clip's output in a padded batch is its own."""
    hparams = _recipe(tmp_path, "sound_classification", "student/xvector_small")
    model = hparams["model"].eval()
    front_end = DeployableFrontEnd(hparams["front_end"], "conv")
    deployed = DeployedModel(front_end, model, "sound_classification")
    clip = real_clips()[0]
    with torch.no_grad():
        feats = hparams["front_end"](clip[None], torch.ones(1))
        noisy = [model(feats, torch.ones(1))["logits"] for _ in range(2)]
        assert not torch.equal(*noisy)  # the original model draws noise on every call
        assert torch.equal(_alone(deployed, clip), _alone(deployed, clip))


def test_parity_failure_raises(tmp_path):
    """A file exported before the weights changed no longer equals the PyTorch model: the parity
    check raises, naming the runner and the way it was run."""
    hparams = _recipe(tmp_path, "audio_tagging", "student/crnn")
    model, front_end = hparams["model"].eval(), hparams["front_end"]
    clips = real_clips()
    deployed = DeployedModel(DeployableFrontEnd(front_end, "conv"), model, "audio_tagging")
    export_onnx(deployed, tmp_path / "m.onnx", example_batch(clips[1:3]), deployed.output_name)
    with torch.no_grad():
        model.head[1].bias.add_(0.01)
    runner = {"onnxruntime": onnx_runner(onnx_session(tmp_path / "m.onnx", threads=1))}
    with pytest.raises(ParityError, match=r"onnxruntime batched .* onnxruntime alone"):
        check_parity(runner, clips, reference_outputs(front_end, model, "audio_tagging", clips))
    with pytest.raises(ValueError, match="3 different lengths"):
        check_parity(runner, clips[:2], np.zeros((2, 37)))


def _finished_run(tmp_path: Path, recipe: str, arch: str) -> Path:
    """A seeded run of ``arch`` with 10 outputs."""
    return finished_run(tmp_path, recipe, arch, tmp_path / "data", 10, {"accuracy": 1})


def _manifest(path: Path, clips: list[Path]) -> Path:
    path.write_text(
        json.dumps({c.stem: {"wav": str(c), "duration": sf.info(str(c)).duration} for c in clips})
    )
    return path


@pytest.fixture
def exported(tmp_path) -> tuple[Path, dict]:
    """export_run on a sound-classification student, with int8, on real FSDD clips."""
    run = _finished_run(tmp_path, "sound_classification", "student/xvector_small")
    digits = sorted(FSDD.glob("*.flac"))
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps([str(d) for d in range(10)]))
    record = export_run(
        run,
        "sound_classification",
        _manifest(tmp_path / "test.json", digits[:30]),
        labels_file=labels,
        quantize=True,
        calibration_manifest=_manifest(tmp_path / "train.json", digits[200:216]),
        calibration_clips=8,
        latency_repeats=2,
    )
    return run, record


def test_export_run_writes_files_and_export_json(exported):
    run, record = exported
    assert json.loads((run / "export.json").read_text()) == record
    assert record["opset"] == 17 and record["sample_rate"] == RATE
    assert [(i["name"], i["shape"]) for i in record["inputs"]] == [
        ("wavs", ["batch", "samples"]),
        ("lengths", ["batch"]),
    ]
    assert record["outputs"] == [
        {"name": "probabilities", "dtype": "float32", "shape": ["batch", 10]}
    ]
    assert record["labels"] == record["columns"] == [str(d) for d in range(10)]
    assert set(record["files"]) == {"torchscript", "onnx", "onnx_int8"}
    for entry in record["files"].values():
        data = (run / entry["name"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
    assert len(set(record["parity"]["clip_samples"])) >= 3
    assert set(record["latency_ms_per_audio_second"]["one_thread"]) == {
        "eager",
        "torchscript",
        "onnx_fp32",
        "onnx_int8",
    }


def test_int8_model_loads_runs_and_is_smaller(exported):
    run, record = exported
    session = onnx_session(run / "model.int8.onnx", threads=1)
    ops = {node.op_type for node in onnx.load(str(run / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    clips = real_clips()
    probabilities = onnx_runner(session)(*(t.numpy() for t in example_batch(clips)))
    assert probabilities.shape == (len(clips), 10)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)
    assert record["files"]["onnx_int8"]["bytes"] < record["files"]["onnx"]["bytes"]
    assert record["int8"]["max_abs_difference"]["alone"] < 0.1


def test_export_run_skips_an_exported_run_and_redoes_a_changed_one(exported):
    run, record = exported
    again = export_run(
        run,
        "sound_classification",
        "unused.json",
        quantize=True,
        calibration_manifest="unused.json",
    )
    assert again == record  # the manifests are never read: nothing was exported again
    (run / "model.onnx").write_bytes(b"changed")
    with pytest.raises(FileNotFoundError):  # a changed file means exporting again
        export_run(run, "sound_classification", run / "missing.json")
    assert not (run / "export.json").exists()


def test_export_run_writes_no_export_json_when_parity_fails(tmp_path, monkeypatch):
    import kd_modules.export.run as run_module

    run = _finished_run(tmp_path, "sound_classification", "student/xvector_small")
    original = run_module.reference_outputs
    monkeypatch.setattr(run_module, "reference_outputs", lambda *a: original(*a) + 1e-3)
    manifest = _manifest(tmp_path / "test.json", sorted(FSDD.glob("*.flac"))[:10])
    with pytest.raises(ParityError):
        export_run(run, "sound_classification", manifest, latency_repeats=0)
    assert not (run / "export.json").exists()


@pytest.mark.parametrize("recipe", sorted(SIZE_KEYS))
def test_readme_snippet_runs_without_torch(tmp_path, recipe):
    """The README's snippet (onnxruntime + soundfile) classifies / tags / embeds a real WAV file in
    a fresh interpreter that never imports torch."""
    arch = {
        "sound_classification": "student/xvector_small",
        "audio_tagging": "student/crnn",
        "speaker_verification": "student/ecapa_tiny",
    }[recipe]
    hparams = _recipe(tmp_path, recipe, arch)
    front_end = DeployableFrontEnd(hparams["front_end"], "conv")
    deployed = DeployedModel(front_end, hparams["model"], recipe)
    clips = real_clips()
    export_onnx(deployed, tmp_path / "model.onnx", example_batch(clips[1:3]), deployed.output_name)
    sf.write(tmp_path / "clip.wav", clips[0].numpy(), RATE, subtype="FLOAT")
    labels = [f"label{i}" for i in range(10)]
    (tmp_path / "export.json").write_text(json.dumps({"columns": labels}))
    code = snippet(recipe) + "\nimport sys\nassert 'torch' not in sys.modules, 'torch imported'\n"
    done = subprocess.run(
        [sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    expected = _alone(deployed, clips[0])[0]
    if recipe == "speaker_verification":
        printed = np.array(json.loads(done.stdout.strip().splitlines()[-1]))
        np.testing.assert_allclose(printed, expected.numpy(), atol=1e-4)
    else:
        assert done.stdout.split()[0] == labels[int(expected.argmax())]


def test_int8_ecapa_leaves_the_node_onnx_runtime_aborts_on_in_float(tmp_path):
    """ONNX Runtime 1.32 aborts the process loading ECAPA's fully quantised QDQ graph: the load is
    checked in a child process and the last quantisable node (the 1x1 conv on the pooled
    statistics) stays in float; the int8 model then loads and embeds real clips."""
    hparams = _recipe(tmp_path, "speaker_verification", "student/ecapa_tiny")
    front_end = DeployableFrontEnd(hparams["front_end"], "conv")
    deployed = DeployedModel(front_end, hparams["model"], "speaker_verification")
    clips = real_clips()
    export_onnx(deployed, tmp_path / "m.onnx", example_batch(clips[1:3]), deployed.output_name)
    in_float = quantise(tmp_path / "m.onnx", tmp_path / "m.int8.onnx", clips)
    assert in_float == ["/model/encoder/fc/conv/Conv"]
    session = onnx_session(tmp_path / "m.int8.onnx", threads=1)
    embeddings = onnx_runner(session)(*(t.numpy() for t in example_batch(clips)))
    assert embeddings.shape == (len(clips), 32) and np.isfinite(embeddings).all()
