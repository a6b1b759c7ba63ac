"""Stage 9: ship one evaluated run (TorchScript, ONNX, int8 ONNX) and score the shipped files.

    python -m kd_modules.stages.export RUN_DIR --test_manifest data/.../test.json \\
        [--labels_file data/.../labels.json] [--trials_file data/.../trials.txt] \\
        [--quantize true --calibration_manifest data/.../train.json] [--latency_repeats 10]

The task is the one the run's results.json names; the test manifest must be the one it was
evaluated on, and the checkpoint exported the one it evaluated. :func:`kd_modules.export.export_run`
writes the files and export.json (parity with the PyTorch model on real test clips, latency);
then the recipe's test metric is computed again on every clip of the test manifest, one clip at a
time, read as stage 7 reads them (cut to ``max_duration_s``), from the outputs of each exported
file and of the PyTorch model itself (``eager``: SpeechBrain's front end and the model, the
parity check's reference): accuracy (sound classification), coarse and fine micro-AUPRC with the
DCASE counting (audio tagging; the targets by the run's ``train_targets`` rule), the EER of the
trial list's raw cosine scores (speaker verification).

The fp32 files must score what the PyTorch model scores on the same clips (within
:data:`METRIC_TOLERANCE`), or the run is not exported; results.json's own figure (``stage_7``)
is reported beside it. The two PyTorch figures are equal unless the metric turns on float
rounding: stage 7 evaluates in padded batches, whose rounding depends on a clip's place in the
batch, and DCASE's AUPRC orders tied recalls by an unstable sort. Measured on the tagging
stand-in (20 validate clips, 14 pairs of them the same audio): stage 7 scored 3 to 5 of those
pairs one float32 ulp apart (6e-8) where one clip at a time ties them, and its coarse micro-AUPRC
was 0.1716 against 0.1766 from the same weights, while every ONNX output was within 2.1e-7 of
the PyTorch model's and its metric equal to it. The int8 file's metric is reported with its
delta from the fp32 ONNX file's (the same clips, one at a time).

Only then does results.json get its ``export`` block (:data:`kd_modules.outputs.EXPORT_BLOCK`:
the files with their sizes and checksums, parity, latency, the metrics), written with the output
checksums stage 7 recorded, so the run stays evaluated. A run that is refused is not exported:
no export.json, no block, and the stage stops with one line saying what differs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kd_modules.brains.tagging import TagLayout, clip_targets
from kd_modules.dataio import AudioReadError, read_audio, read_json, write_json_atomic
from kd_modules.export import ParityError, RecipePipeline, export_run
from kd_modules.export.manifest import EXPORT_JSON
from kd_modules.export.run import load_run
from kd_modules.export.runtime import load_torchscript, onnx_runner, onnx_session, torch_runner
from kd_modules.hparams import OneLineError
from kd_modules.outputs import (
    EXPORT_BLOCK,
    RESULTS,
    file_sha256,
    not_evaluated_reason,
    not_exported_reason,
)
from kd_modules.progress import progress_bar
from kd_modules.results import stale_data_runs
from kd_modules.run_folder import folder_lock
from kd_modules.stages.status import yaml_value
from kd_modules.verification import read_trials, score_trials, verification_metrics

logger = logging.getLogger(__name__)

#: the metrics of results.json each task's exported files are scored on
TASK_METRICS = {
    "sound_classification": ("accuracy",),
    "audio_tagging": ("coarse_micro_auprc", "fine_micro_auprc"),
    "speaker_verification": ("eer",),
}
#: 0.01 points, the last digit the results table shows: fp32 files within it score "the same"
METRIC_TOLERANCE = 1e-4
#: export.json's file roles -> the variant names of the metrics and latencies
VARIANTS = {"torchscript": "torchscript", "onnx": "onnx_fp32", "onnx_int8": "onnx_int8"}
FP32_VARIANTS = ("torchscript", "onnx_fp32")
REFERENCE = "eager"  # the PyTorch model, each clip alone: what the fp32 files must score


class ExportRefused(OneLineError, RuntimeError):
    """The run cannot be exported (not evaluated), or its exported files differ from it."""


@dataclass
class EvaluationData:
    """What the task's metric reads besides the outputs: the test manifest, and the tag layout
    (``labels_file``) with the targets' ``rule`` (tagging) or the trial list (verification)."""

    manifest: Path
    labels_file: Path | None = None
    trials_file: Path | None = None
    rule: str | None = None


def file_runners(run_dir: Path, files: dict, threads: int) -> dict:
    """Variant name -> runner of each exported file of export.json's ``files``, and ``eager``:
    the run's PyTorch model behind SpeechBrain's front end, from the exported checkpoint."""
    hparams, _ = load_run(run_dir)
    pipeline = RecipePipeline(
        hparams["front_end"], hparams["model"], read_json(run_dir / RESULTS)["task"]
    )
    runners = {REFERENCE: torch_runner(pipeline)}
    for role, name in VARIANTS.items():
        if role not in files:
            continue
        path = run_dir / files[role]["name"]
        if role == "torchscript":
            runners[name] = torch_runner(load_torchscript(path))
        else:
            runners[name] = onnx_runner(onnx_session(path, threads))
    return runners


def clip_outputs(
    runners: dict, manifest: Path, sample_rate: int, max_duration_s: float | None
) -> tuple[list[str], dict[str, np.ndarray], int]:
    """``(ids, {variant: outputs (N, K)}, skipped)``: every runner on each readable clip of
    ``manifest`` alone (batch 1), cut to ``max_duration_s``; unreadable clips are skipped and
    counted, as stage 7 skips them."""
    entries = read_json(manifest)
    limit = None if max_duration_s is None else int(float(max_duration_s) * sample_rate)
    ids, rows, skipped = [], {name: [] for name in runners}, 0
    bar = progress_bar(entries.items(), total=len(entries), desc="stage 9: test clips", unit="clip")
    for utt, entry in bar:
        try:
            clip = read_audio(entry["wav"], sample_rate)[:limit].numpy()
        except AudioReadError as error:
            logger.warning("skipping test clip: %s", error)
            skipped += 1
            continue
        wavs, lengths = clip[None], np.array([clip.shape[0]], dtype=np.int64)
        for name, runner in runners.items():
            rows[name].append(runner(wavs, lengths)[0])
        ids.append(utt)
    if not ids:
        raise ExportRefused(f"{manifest}: no readable test clip to score the exported files on")
    return ids, {name: np.stack(values) for name, values in rows.items()}, skipped


def task_metrics(task: str, ids: Sequence[str], outputs: np.ndarray, test: EvaluationData) -> dict:
    """:data:`TASK_METRICS` of ``task`` from the outputs ``(N, K)`` of the clips ``ids``."""
    entries = read_json(test.manifest)
    if task == "sound_classification":
        labels = np.array([int(entries[utt]["label_id"]) for utt in ids])
        return {"accuracy": float((outputs.argmax(1) == labels).mean())}
    if task == "audio_tagging":
        truth = np.array([clip_targets(entries[utt], test.rule) for utt in ids], dtype=np.float32)
        metrics, _ = TagLayout.from_json(test.labels_file).metrics(truth, outputs)
        return {name: float(metrics[name]) for name in TASK_METRICS[task]}
    embeddings = {utt: torch.from_numpy(row) for utt, row in zip(ids, outputs)}
    trials = [t for t in read_trials(test.trials_file) if t[1] in embeddings and t[2] in embeddings]
    labels = torch.tensor([label for label, _, _ in trials])
    return {"eer": verification_metrics(labels, score_trials(embeddings, trials))["eer"]}


def metric_entries(reported: dict, scored: dict[str, dict]) -> dict:
    """``{metric: {"stage_7": results.json's, variant: its score..., "int8_delta": int8 minus
    fp32 ONNX}}`` (the delta only with an int8 file)."""
    entries = {}
    for name, value in reported.items():
        entry = {"stage_7": value, **{variant: s[name] for variant, s in scored.items()}}
        if "onnx_int8" in scored:
            entry["int8_delta"] = scored["onnx_int8"][name] - scored["onnx_fp32"][name]
        entries[name] = entry
    return entries


def fp32_mismatches(metrics: dict) -> list[str]:
    """``"onnx_fp32 accuracy 0.8500 vs 0.9000"`` for every fp32 variant whose metric differs from
    the PyTorch model's on the same clips (:data:`REFERENCE`) by more than
    :data:`METRIC_TOLERANCE`."""
    return [
        f"{variant} {name} {entry[variant]:.4f} vs {entry[REFERENCE]:.4f}"
        for name, entry in metrics.items()
        for variant in FP32_VARIANTS
        if variant in entry and not abs(entry[variant] - entry[REFERENCE]) <= METRIC_TOLERANCE
    ]


def batching_notes(metrics: dict) -> list[str]:
    """A line for each metric whose one-clip-at-a-time PyTorch figure differs from stage 7's by
    more than :data:`METRIC_TOLERANCE` (float rounding in stage 7's padded batches: module doc)."""
    return [
        f"{name}: PyTorch one clip at a time {entry[REFERENCE]:.4f}, stage 7's batches "
        f"{entry['stage_7']:.4f}; the exported files score the former"
        for name, entry in metrics.items()
        if not abs(entry[REFERENCE] - entry["stage_7"]) <= METRIC_TOLERANCE
    ]


def check_evaluation(run_dir: Path, results: dict, test_manifest: Path) -> None:
    """Refuse a test manifest other than the one results.json was evaluated on, or data that
    stage 1 prepared again since (``kd_modules.results.stale_data_runs``)."""
    named = (results.get("data_files") or {}).get("manifests", {}).get("test")
    if named is not None and Path(named).resolve() != Path(test_manifest).resolve():
        raise ExportRefused(
            f"{run_dir} was evaluated on {named}, not on {test_manifest}: give "
            "the test manifest of its results.json"
        )
    if stale_data_runs([{**results, "run_dir": str(run_dir)}]):
        raise ExportRefused(
            f"{run_dir} was trained and evaluated on other data than the prepared "
            "data now: train and evaluate it again (stages 2-7) first"
        )


def check_checkpoint(run_dir: Path, results: dict, record: dict) -> None:
    """Refuse an export of another checkpoint than the one results.json evaluated."""
    if Path(record["checkpoint"]).name != Path(results["checkpoint"]).name:
        raise ExportRefused(
            f"{run_dir}: results.json evaluated {Path(results['checkpoint']).name}"
            f", the best checkpoint now is {Path(record['checkpoint']).name}: run "
            "stage 7 again"
        )


def export_block(run_dir: Path, record: dict, metrics: dict, clips: int, skipped: int) -> dict:
    """results.json's ``export`` block: what a reader of the results table needs of export.json
    (files with sizes and checksums, export.json's own among them; parity; int8; latency) and
    the metrics of the exported files."""
    manifest = run_dir / EXPORT_JSON
    files = {
        **record["files"],
        "export_json": {
            "name": EXPORT_JSON,
            "sha256": file_sha256(manifest),
            "bytes": manifest.stat().st_size,
        },
    }
    block = {
        "checkpoint": record["checkpoint"],
        "opset": record["opset"],
        "onnxruntime": record["onnxruntime"],
        "files": files,
        "parity": record["parity"],
        "metrics": metrics,
        "metric_tolerance": METRIC_TOLERANCE,
        "test_clips": clips,
        "skipped_test_clips": skipped,
    }
    for key in ("int8", "latency_ms_per_audio_second"):
        if key in record:
            block[key] = record[key]
    return block


def set_export_block(run_dir: Path, block: dict | None) -> dict:
    """Rewrite results.json with ``block`` as its export block (None: without one), every other
    field (the output checksums of stage 7 among them) as it is; returns the results."""
    path = run_dir / RESULTS
    results = read_json(path)
    results.pop(EXPORT_BLOCK, None)
    if block is not None:
        results[EXPORT_BLOCK] = block
    write_json_atomic(path, results)
    return results


def scored_block(run_dir: Path, record: dict, results: dict, test: EvaluationData) -> dict:
    """The export block of the files export.json's ``record`` names, with their test metric and
    the PyTorch model's (:func:`clip_outputs`, :func:`task_metrics`); refused when an fp32 file
    scores otherwise than the PyTorch model."""
    task = results["task"]
    if task == "audio_tagging":
        test.rule = results["train_targets"]
    runners = file_runners(run_dir, record["files"], torch.get_num_threads())
    max_duration_s = yaml_value(run_dir / "hyperparams.yaml", "max_duration_s")
    ids, outputs, skipped = clip_outputs(
        runners, test.manifest, record["sample_rate"], max_duration_s
    )
    scored = {name: task_metrics(task, ids, rows, test) for name, rows in outputs.items()}
    reported = {name: results["metrics"][name] for name in TASK_METRICS[task]}
    metrics = metric_entries(reported, scored)
    mismatches = fp32_mismatches(metrics)
    if mismatches:
        raise ExportRefused(
            f"{run_dir} is not exported: the fp32 files' test metric differs from the PyTorch "
            f"model's by more than {METRIC_TOLERANCE:g}: {', '.join(mismatches)}"
        )
    for note in batching_notes(metrics):
        logger.info("%s: %s", run_dir, note)
    return export_block(run_dir, record, metrics, len(ids), skipped)


def export_and_score(
    run_dir: str | Path,
    test: EvaluationData,
    quantize: bool = False,
    calibration_manifest: str | Path | None = None,
    latency_repeats: int = 10,
    force: bool = False,
) -> dict:
    """Export the evaluated run in ``run_dir``, score the files on ``test`` and write results.json's
    export block (see the module doc); returns the block. A run already exported (with an int8
    model when ``quantize``) is left as it is unless ``force``."""
    run_dir = Path(run_dir)
    reason = not_evaluated_reason(run_dir)
    if reason is not None:
        raise ExportRefused(f"{run_dir} is not evaluated ({reason}): run stage 7 first")
    if not force and not_exported_reason(run_dir, quantize) is None:
        logger.info("%s: already exported", run_dir)
        return read_json(run_dir / RESULTS)[EXPORT_BLOCK]
    with folder_lock(run_dir):
        results = set_export_block(run_dir, None)  # not exported until scored again
        task = results["task"]
        check_evaluation(run_dir, results, test.manifest)
        try:
            record = export_run(
                run_dir,
                task,
                test.manifest,
                test.labels_file,
                quantize,
                calibration_manifest,
                latency_repeats=latency_repeats,
                force=force,
            )
        except ParityError as error:
            raise ExportRefused(f"{run_dir} is not exported: {error}") from None
        try:
            check_checkpoint(run_dir, results, record)
            block = scored_block(run_dir, record, results, test)
        except ExportRefused:
            (run_dir / EXPORT_JSON).unlink(missing_ok=True)  # refused: not exported
            raise
        set_export_block(run_dir, block)
    return block


def summary(run_dir: Path, block: dict) -> str:
    """One line: the metrics of PyTorch, ONNX fp32 and int8, one-thread latency, file sizes."""
    parts = []
    for name, entry in block["metrics"].items():
        text = f"{name} PyTorch {entry[REFERENCE]:.4f}, ONNX {entry['onnx_fp32']:.4f}"
        if "onnx_int8" in entry:
            text += f", int8 {entry['onnx_int8']:.4f} ({entry['int8_delta']:+.4f})"
        parts.append(text)
    latency = block.get("latency_ms_per_audio_second", {}).get("one_thread", {})
    if latency:
        parts.append(
            "1-thread ms per s of audio: "
            + ", ".join(f"{variant} {value:.2f}" for variant, value in latency.items())
        )
    parts.append(
        ", ".join(
            f"{entry['name']} {entry['bytes'] / 1e6:.2f} MB"
            for role, entry in block["files"].items()
            if role != "export_json"
        )
    )
    return f"stage 9: {run_dir}: " + "; ".join(parts)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kd_modules.stages.export", description=__doc__.splitlines()[0]
    )
    parser.add_argument("run_dir", type=Path, help="an evaluated run folder (results.json)")
    parser.add_argument("--test_manifest", type=Path, required=True, help="the recipe's test.json")
    parser.add_argument("--labels_file", type=Path, help="labels.json (classes / tag layout)")
    parser.add_argument("--trials_file", type=Path, help="speaker verification's trial list")
    parser.add_argument(
        "--quantize",
        choices=("true", "false"),
        default="false",
        help="also write model.int8.onnx (static int8)",
    )
    parser.add_argument(
        "--calibration_manifest",
        type=Path,
        help="training clips that calibrate the int8 model (train.json)",
    )
    parser.add_argument(
        "--latency_repeats",
        type=int,
        default=10,
        help="timed calls per variant and thread setting (0: no latency)",
    )
    parser.add_argument("--force", action="store_true", help="export again even when exported")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """The command line (see the module doc); a refusal is one line on stderr, exit status 1."""
    args = _parser().parse_args(argv)
    quantize = args.quantize == "true"
    if quantize and args.calibration_manifest is None:
        _parser().error("--quantize true needs --calibration_manifest (the training manifest)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    test = EvaluationData(args.test_manifest, args.labels_file, args.trials_file)
    given = {
        "test_manifest": args.test_manifest,
        "labels_file": args.labels_file,
        "trials_file": args.trials_file,
        "calibration_manifest": args.calibration_manifest,
    }
    try:
        for option, path in given.items():
            if path is not None and not path.is_file():
                raise ExportRefused(f"--{option} {path} does not exist (stage 1 writes it)")
        block = export_and_score(
            args.run_dir,
            test,
            quantize,
            args.calibration_manifest,
            args.latency_repeats,
            args.force,
        )
    except ExportRefused as error:
        print(f"stage 9: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    print(summary(args.run_dir, block))


if __name__ == "__main__":
    main()
