"""Export one finished run: TorchScript, ONNX (and int8 ONNX), parity, latency, export.json.

A recipe's stage 9 calls :func:`export_run` once per run folder it exports::

    from kd_modules.export import export_run
    record = export_run(
        "exp/fsdd/fold1/student/xvector_small/kd/seed1", task="sound_classification",
        test_manifest="data/fsdd/fold1/test.json", labels_file="data/fsdd/labels.json",
        quantize=True, calibration_manifest="data/fsdd/fold1/train.json",
    )

It writes into the run folder ``model.torchscript.pt``, ``model.onnx`` (and
``model.int8.onnx``), then ``export.json`` (:mod:`kd_modules.export.manifest`) last, only when
every fp32 file meets the parity goal (:mod:`kd_modules.export.parity`); a run already exported
from the same checkpoint with unchanged files is returned as it is (``force`` re-exports).
"""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from hyperpyyaml import load_hyperpyyaml

from kd_modules.checkpoints import Checkpointer
from kd_modules.dataio import read_audio, read_json
from kd_modules.export.formats import OPSET, example_batch, export_onnx, export_torchscript
from kd_modules.export.frontend import DeployableFrontEnd
from kd_modules.export.latency import interleaved_latency
from kd_modules.export.manifest import (
    EXPORT_JSON,
    io_spec,
    is_exported,
    read_export_json,
    write_export_json,
)
from kd_modules.export.parity import (
    MIN_LENGTHS,
    TOLERANCE,
    check_parity,
    max_differences,
    reference_outputs,
)
from kd_modules.export.quantize import quantise
from kd_modules.export.runtime import load_torchscript, onnx_runner, onnx_session, torch_runner
from kd_modules.export.wrapper import TASK_OUTPUTS, DeployedModel, RecipePipeline
from kd_modules.teacher import preserved_random_state

logger = logging.getLogger(__name__)

FILES = {
    "torchscript": "model.torchscript.pt",
    "onnx": "model.onnx",
    "onnx_int8": "model.int8.onnx",
}


def load_run(run_folder: Path, max_key: str | None = None) -> tuple[dict, str]:
    """The run's hyperparameters (its own ``hyperparams.yaml``) with ``model`` loaded from its
    best checkpoint (largest ``max_key``, by default the run's ``selection_key`` or
    ``accuracy``), and that checkpoint's path."""
    hparams_file = run_folder / "hyperparams.yaml"
    if not hparams_file.is_file():
        raise FileNotFoundError(
            f"cannot export {run_folder}: {hparams_file.name} is missing (train the run first)"
        )
    with open(hparams_file) as stream, preserved_random_state():
        hparams = load_hyperpyyaml(stream)
    key = max_key or hparams.get("selection_key", "accuracy")
    model = hparams["model"]
    checkpoint = Checkpointer(run_folder / "save", recoverables={"model": model})
    found = checkpoint.find_checkpoint(max_key=key)
    if found is None:
        raise FileNotFoundError(
            f"cannot export {run_folder}: no checkpoint under "
            f"{run_folder / 'save'} with {key!r} in its metadata"
        )
    model.load_state_dict(torch.load(found.paramfiles["model"], map_location="cpu"))
    return hparams, str(found.path)


def manifest_clips(
    manifest: str | Path, sample_rate: int, count: int, max_duration_s: float | None = None
) -> list[torch.Tensor]:
    """``count`` real clips of a SpeechBrain JSON manifest (``wav`` and optional ``start``/
    ``stop`` in samples), spread evenly over its entries sorted by duration, so their lengths
    vary; each cut to ``max_duration_s`` as the recipe cuts it."""
    entries = sorted(read_json(manifest).values(), key=lambda entry: float(entry["duration"]))
    if not entries:
        raise ValueError(f"{manifest} lists no clips")
    picks = np.unique(np.linspace(0, len(entries) - 1, count).round().astype(int))
    limit = None if max_duration_s is None else int(max_duration_s * sample_rate)
    clips = []
    for index in picks:
        entry = entries[index]
        clip = read_audio(entry["wav"], sample_rate, entry.get("start", 0), entry.get("stop"))
        clips.append(clip[:limit])
    return clips


def varied_lengths(clips: list[torch.Tensor]) -> list[torch.Tensor]:
    """``clips`` as they are when they have :data:`~kd_modules.export.parity.MIN_LENGTHS`
    different lengths or more; else clip ``k`` of ``N`` cut to its first ``(N + k) / 2N`` (plus
    one sample, off the hop grid), the last whole. A recipe whose clips are all one length
    (SONYC-UST's 10 s, the tagging stand-in's 4 s) would otherwise give the tracer an example
    batch without padding and the parity check no padded clip."""
    if len({int(clip.numel()) for clip in clips}) >= MIN_LENGTHS or len(clips) < MIN_LENGTHS:
        return clips
    count = len(clips)
    return [
        clip if k == count - 1 else clip[: clip.numel() * (count + k) // (2 * count) + 1]
        for k, clip in enumerate(clips)
    ]


def labels_entry(labels_file: str | Path | None) -> dict:
    """export.json's ``labels`` (the file's JSON: class names or the tag layout) and
    ``columns`` (the name of each output column, where the labels give them)."""
    if labels_file is None:
        return {"labels": None, "columns": None}
    labels = read_json(labels_file)
    if isinstance(labels, dict) and {"fine", "coarse"} <= set(labels):
        return {"labels": labels, "columns": [*labels["fine"], *labels["coarse"]]}
    return {"labels": labels, "columns": labels if isinstance(labels, list) else None}


def latency_entry(
    files: dict[str, Path], eager: torch.nn.Module, wav: np.ndarray, sample_rate: int, repeats: int
) -> dict:
    """``{"one_thread"|"all_threads": {variant: ms per second of audio}}`` of eager PyTorch (the
    recipe's own pipeline), TorchScript and ONNX Runtime (fp32, and int8 when exported), timed
    interleaved on ``wav``."""
    scripted = load_torchscript(files["torchscript"])
    entry = {}
    for label, threads in (("one_thread", 1), ("all_threads", os.cpu_count() or 1)):
        runners = {"eager": torch_runner(eager), "torchscript": torch_runner(scripted)}
        for role, name in (("onnx", "onnx_fp32"), ("onnx_int8", "onnx_int8")):
            if role in files:
                runners[name] = onnx_runner(onnx_session(files[role], threads))
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            entry[label] = interleaved_latency(runners, wav, sample_rate, repeats)
        finally:
            torch.set_num_threads(previous)
    return entry


def export_run(
    run_folder: str | Path,
    task: str,
    test_manifest: str | Path,
    labels_file: str | Path | None = None,
    quantize: bool = False,
    calibration_manifest: str | Path | None = None,
    max_key: str | None = None,
    parity_clips: int = 6,
    calibration_clips: int = 32,
    latency_repeats: int = 10,
    force: bool = False,
) -> dict:
    """Export the run in ``run_folder`` (see the module doc); returns its export.json record.

    Arguments
    ---------
    run_folder : path
        A finished run (``hyperparams.yaml``, ``save/`` checkpoints).
    task : str
        ``sound_classification`` | ``audio_tagging`` | ``speaker_verification``: the output
        (class probabilities, tag scores, the speaker embedding).
    test_manifest : path
        The recipe's test manifest: ``parity_clips`` clips of spread lengths from it are the
        parity check's clips, the longest of them the latency clip.
    labels_file : path, optional
        labels.json (class names, or the tag layout), copied into export.json.
    quantize : bool
        Also write ``model.int8.onnx`` (static int8, calibrated on ``calibration_clips`` clips
        of ``calibration_manifest``, the training manifest).
    max_key : str, optional
        The checkpoint to export (largest of this metadata key); default: the run's own.
    latency_repeats : int
        Timed calls per variant and thread setting (0: no latency in export.json).
    force : bool
        Export again even when export.json says this checkpoint is exported.

    Raises :class:`~kd_modules.export.parity.ParityError` when an fp32 file misses the parity
    goal; export.json is then absent, so the run is not exported.
    """
    run_folder = Path(run_folder)
    if task not in TASK_OUTPUTS:
        raise ValueError(f"task must be one of {sorted(TASK_OUTPUTS)}, not {task!r}")
    if quantize and calibration_manifest is None:
        raise ValueError("quantize=True needs calibration_manifest (the training manifest)")
    hparams, checkpoint = load_run(run_folder, max_key)
    roles = {"torchscript", "onnx", *({"onnx_int8"} if quantize else ())}
    if not force and is_exported(run_folder, roles, checkpoint):
        logger.info("%s: already exported (%s)", run_folder, EXPORT_JSON)
        return read_export_json(run_folder)
    (run_folder / EXPORT_JSON).unlink(missing_ok=True)  # not finished until written again
    rate = int(hparams["sample_rate"])
    clips = varied_lengths(
        manifest_clips(test_manifest, rate, parity_clips, hparams.get("max_duration_s"))
    )
    model, front_end = hparams["model"], hparams["front_end"]
    files = {role: run_folder / FILES[role] for role in ("torchscript", "onnx")}
    example = example_batch(sorted(clips, key=len)[:2])
    scripted = DeployedModel(DeployableFrontEnd(front_end, "stft"), model, task)
    deployed = DeployedModel(DeployableFrontEnd(front_end, "conv"), model, task)
    export_torchscript(scripted, files["torchscript"], example)
    export_onnx(deployed, files["onnx"], example, deployed.output_name)
    reference = reference_outputs(front_end, model, task, clips)
    runners = {
        "torchscript": torch_runner(load_torchscript(files["torchscript"])),
        "onnxruntime": onnx_runner(onnx_session(files["onnx"], 1)),
    }
    parity = check_parity(runners, clips, reference)
    fields = {
        "task": task,
        "run_folder": str(run_folder),
        "checkpoint": checkpoint,
        "sample_rate": rate,
        "opset": OPSET,
        "exporter": f"torch.onnx.export (TorchScript-based), torch {torch.__version__}",
        "onnxruntime": onnxruntime.__version__,
        **io_spec(deployed.output_name, int(reference.shape[1])),
        **labels_entry(labels_file),
        "parity": {
            "tolerance": TOLERANCE,
            "clip_samples": [int(c.numel()) for c in clips],
            **parity,
        },
    }
    if quantize:
        files["onnx_int8"] = run_folder / FILES["onnx_int8"]
        calibration = manifest_clips(
            calibration_manifest, rate, calibration_clips, hparams.get("max_duration_s")
        )
        in_float = quantise(files["onnx"], files["onnx_int8"], calibration)
        int8 = onnx_runner(onnx_session(files["onnx_int8"], 1))
        fields["int8"] = {
            "calibration_clips": len(calibration),
            "nodes_in_float": in_float,
            "max_abs_difference": max_differences(int8, clips, reference),
        }
    if latency_repeats:
        longest = max(clips, key=len).numpy()
        fields["latency_ms_per_audio_second"] = {
            "clip_samples": int(longest.shape[0]),
            "repeats": latency_repeats,
            "machine": platform.processor() or platform.machine(),
            **latency_entry(
                files, RecipePipeline(front_end, model, task), longest, rate, latency_repeats
            ),
        }
    record = write_export_json(run_folder, files, fields)
    logger.info("%s: exported %s", run_folder, ", ".join(p.name for p in files.values()))
    return record
