"""Provenance: what a run was trained on and with (data hashes, teacher, code and libraries).

A run folder records :func:`run_record` on its first start (``kd_modules.run_folder``), and
every results.json carries the data record, the git commit and the library versions, so that a
reported number can be traced to the data, teacher and code that produced it.
"""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from kd_modules.outputs import file_sha256

if TYPE_CHECKING:
    from kd_modules.teacher import Teacher


def data_record(manifests: dict[str, str | Path], prepare_settings: str | Path | None) -> dict:
    """What a run is trained on: each manifest's hash and the settings stage 1 recorded.

    ``manifests`` maps a split name to its manifest file; ``prepare_settings`` is the JSON file in
    which the prepare stage wrote its arguments (data root, split, folds, rate...), or None.
    """
    settings = None
    if prepare_settings is not None and Path(prepare_settings).is_file():
        settings = json.loads(Path(prepare_settings).read_text())
    return {
        "manifests": {split: file_sha256(path) for split, path in sorted(manifests.items())},
        "prepare": settings,
    }


def manifest_files(hparams: dict, splits: tuple[str, ...] = ("train", "valid", "test")) -> dict:
    """Split name -> manifest file of the run (hparams ``<split>_annotation``)."""
    return {split: hparams[f"{split}_annotation"] for split in splits}


def run_record(hparams: dict, teacher: Teacher | None, splits: tuple[str, ...]) -> dict:
    """What a run folder trains on: the manifests, stage 1's settings and the teacher. The
    teacher is its model's fingerprint, the one the teacher's results.json reports (an
    IntegratedTeacher's own fingerprint also covers the attribution settings: a cache key). A
    ``--teacher_source`` teacher adds ``teacher_source``: its source, files' SHA-256 and the
    ``--trust_teacher_code`` choice (``kd_modules.hub.teacher.HubTeacher.record``)."""
    model = getattr(teacher, "teacher", teacher)  # an IntegratedTeacher wraps a Teacher
    return {
        "data": data_record(manifest_files(hparams, splits), hparams["prepare_settings"]),
        "teacher_fingerprint": model.fingerprint if model is not None else None,
        "teacher_source": model.record() if hasattr(model, "record") else None,
    }


def versions() -> dict[str, str]:
    """Versions of Python and the libraries a result depends on."""
    import speechbrain
    import torch
    import torchaudio

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchaudio": torchaudio.__version__,
        "speechbrain": speechbrain.__version__,
    }


def git_commit(path: str | Path = ".") -> str:
    """The repository's HEAD commit (with ``+dirty`` for local changes), or ``unknown``."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=path,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")
