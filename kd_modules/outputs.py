"""The output files a results.json names, their checksums, and whether a run is evaluated.

A results.json names the files its evaluation wrote (``OUTPUT_FIELDS``: the trial scores of a
verification run, the prediction files of a tagging run), by a path relative to the run folder or
an absolute one. :func:`output_checksums` gives the SHA-256 of each when the results are written
(``kd_modules.results.write_results`` records them under ``OUTPUT_RECORD``); a run folder is
*evaluated* when its results.json is newer than its ``train_info.json`` (evaluated since it last
trained) and every named file is still there with its recorded checksum. Stage 7 of every recipe
asks, once per run folder (``tools/stage_helpers.sh``, ``evaluate_once``)::

    python -m kd_modules.stages.status evaluated RUN_DIR   # exit 0: evaluated; 1: not, and why

Stage 9 (``kd_modules.stages.export``) adds an ``export`` block (``EXPORT_BLOCK``) to an evaluated
run's results.json, its output checksums kept as they are; the run is *exported*
(:func:`not_exported_reason`) while it is evaluated and every file the block names (the ONNX,
TorchScript and int8 files, export.json) is still there with its recorded checksum.

Standard library only: stage 7 asks this of every run folder, and importing torch would add
seconds to each answer.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

OUTPUT_FIELDS = ("scores", "predictions")
OUTPUT_RECORD = "output_sha256"
EXPORT_BLOCK = "export"
RESULTS = "results.json"
TRAIN_INFO = "train_info.json"


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex), read in 1 MiB blocks (score files can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def named_outputs(results: dict, run_dir: str | Path) -> dict[str, Path]:
    """Name as results.json writes it -> the file, for every ``OUTPUT_FIELDS`` entry (a path,
    or a dict of paths); relative names are under ``run_dir``."""
    names: list[str] = []
    for field in OUTPUT_FIELDS:
        value = results.get(field)
        if isinstance(value, str):
            names.append(value)
        elif isinstance(value, dict):
            names += [name for name in value.values() if isinstance(name, str)]
    return {name: Path(run_dir) / name for name in names}


def output_checksums(results: dict, run_dir: str | Path) -> dict[str, str]:
    """Name -> SHA-256 of each output file ``results`` names; a named file that is missing is
    an error (the evaluation that writes the results has just written its outputs)."""
    outputs = named_outputs(results, run_dir)
    missing = [name for name, path in outputs.items() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"results.json names output files that do not exist: {missing}")
    return {name: file_sha256(path) for name, path in outputs.items()}


def not_evaluated_reason(run_dir: str | Path) -> str | None:
    """None when ``run_dir`` is evaluated (see the module's docstring), else why it is not, in
    a few words ("scores_snorm.txt is missing")."""
    run_dir = Path(run_dir)
    results_file, info_file = run_dir / RESULTS, run_dir / TRAIN_INFO
    if not results_file.is_file():
        return f"no {RESULTS} yet"
    if info_file.is_file() and results_file.stat().st_mtime_ns <= info_file.stat().st_mtime_ns:
        return f"trained again since its {RESULTS} was written"
    try:
        results = json.loads(results_file.read_text())
    except (OSError, ValueError) as error:
        return f"{RESULTS} is unreadable ({error})"
    recorded = results.get(OUTPUT_RECORD) or {}
    for name, path in named_outputs(results, run_dir).items():
        if not path.is_file():
            return f"{name} is missing"
        if name not in recorded:
            return f"{name} has no checksum in {RESULTS} (written before they were recorded)"
        if file_sha256(path) != recorded[name]:
            return f"{name} changed since it was evaluated"
    return None


def not_exported_reason(run_dir: str | Path, int8: bool = False) -> str | None:
    """None when ``run_dir`` is exported (see the module's docstring), with an int8 model when
    ``int8``; else why not, in a few words ("model.onnx changed since it was exported")."""
    run_dir = Path(run_dir)
    reason = not_evaluated_reason(run_dir)
    if reason is not None:
        return f"not evaluated: {reason}"
    results = json.loads((run_dir / RESULTS).read_text())
    block = results.get(EXPORT_BLOCK)
    if not block:
        return "not exported yet"
    if Path(block.get("checkpoint", "")).name != Path(results.get("checkpoint", "")).name:
        return "exported from another checkpoint than the one evaluated"
    files = block.get("files", {})
    if int8 and "onnx_int8" not in files:
        return "exported without an int8 model"
    for entry in files.values():
        path = run_dir / entry["name"]
        if not path.is_file():
            return f"{entry['name']} is missing"
        if file_sha256(path) != entry["sha256"]:
            return f"{entry['name']} changed since it was exported"
    return None
