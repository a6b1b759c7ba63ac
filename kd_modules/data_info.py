"""Stage 1's facts about the data it prepared, written once in ``<data folder>/data_info.json``.

The prepare stage of each recipe knows what the later stages need about its data: the model's
output size (``outputs``: classes, tag columns or training speakers), the classes, the split
and folds, the speakers. It writes them here with the files the runs read (manifests, labels,
trial list, its own settings), so that run.sh and the tools read one fact instead of counting
labels again, and the stage helpers can hash those files to tell whether a finished run was
trained on this data (``kd_modules.stages.status``). Standard library only: run.sh asks before
its stages, and importing torch would add seconds to each answer.

Keys: ``dataset``, ``outputs``, ``files`` (paths relative to the data folder) and the recipe's
own facts (e.g. ``classes``, ``split``, ``folds``, ``speakers``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DATA_INFO = "data_info.json"


def data_info(folder: str | Path, dataset: str, outputs: int, files: list[str], **facts: Any):
    """The data_info.json of ``folder``: ``files`` (relative to it) must all exist there, so a
    stage that hashes them never meets a name stage 1 did not write."""
    missing = [name for name in files if not (Path(folder) / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: data_info.json names files it lacks: {missing}")
    return {"dataset": dataset, "outputs": outputs, **facts, "files": sorted(files)}


def read_data_info(path: str | Path) -> dict:
    """A data_info.json (or the one in the folder ``path``); a missing one is an error saying
    to run stage 1."""
    path = Path(path)
    path = path / DATA_INFO if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"no prepared data: {path} is missing (run stage 1 first)")
    return json.loads(path.read_text(encoding="utf-8"))


def data_files(path: str | Path) -> list[Path]:
    """The data_info.json at ``path`` and every file it names: what a run is trained on."""
    info = read_data_info(path)
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    return [folder / DATA_INFO, *(folder / name for name in info["files"])]
