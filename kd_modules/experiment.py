"""What every recipe's ``train.py`` needs around its Brain, written once for all recipes.

- :func:`folder_lock`: one process at a time in a run folder (or a cache folder being built);
  a second one stops with a message naming the holder.
- :func:`check_run_record`: a run folder records the data (manifest hashes, prepare settings)
  and the teacher it was trained on, and refuses to resume or evaluate on anything else.
- :class:`SessionClock`: the training wall time of a run over all its sessions, killed ones
  included (a heartbeat file), for an honest ``wall_time_s``.
- :func:`training_status` / :func:`require_finished_teacher`: a KD stage refuses a teacher whose
  training has not finished, unless the user says so.
- :func:`load_teacher_side`: the frozen teacher, and its cache when the run uses one.

The recipe's hparams follow one contract: ``method``, ``teacher_folder``, ``teacher_taps``,
``teacher_selection`` (``{max_key: ...}`` or ``{min_key: ...}``), ``use_teacher_cache``,
``allow_unfinished_teacher``, ``exp_root``, ``feature_settings``, ``train_annotation`` and
``random_input_settings`` (name -> value of every setting that randomises the training inputs).
Nothing here knows a dataset.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from kd_modules.cache import TeacherCache, cache_key, check_deterministic_inputs
from kd_modules.dataio import write_json_atomic
from kd_modules.teacher import Teacher

LOCK_NAME = ".lock"
RUN_RECORD = "run_record.json"
TRAIN_INFO = "train_info.json"
SESSIONS = "train_sessions.json"


class FolderBusyError(RuntimeError):
    """Another live process holds the folder's lock."""


class RunRecordMismatch(RuntimeError):
    """A run folder was trained on other data (or from another teacher) than asked now."""


class UnfinishedTeacherError(RuntimeError):
    """A KD stage was asked to learn from a teacher whose training has not finished."""


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str = "run folder") -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (created if missing) while the block runs.

    The lock is ``fcntl.flock`` on ``folder/.lock``: the kernel releases it when the holder dies,
    even by ``kill -9``, so a stale lock never blocks a resume. The file names the holder (pid,
    host, start time, command) for the message a second process gets.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_NAME, "a+")  # noqa: SIM115 - held for the whole block
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise FolderBusyError(
            f"The {what} {folder} is in use by {holder}. Two runs in one folder would overwrite "
            "each other's checkpoints: wait for it to finish (or stop it), or use another folder."
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        command = " ".join(sys.argv)
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {started} ({command})")
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


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


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Human-readable list of the leaves that differ between two nested dicts."""
    lines = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            lines += _differences(before, after, f"{prefix}{key}.")
        elif before != after:
            if isinstance(before, str) and len(before) == 64:  # a hash: say so, briefly
                lines.append(f"{prefix}{key} changed (sha256 {before[:8]} -> {str(after)[:8]})")
            else:
                lines.append(f"{prefix}{key}: {before!r} -> {after!r}")
    return lines


def check_run_record(folder: str | Path, record: dict) -> None:
    """Write ``folder/run_record.json`` on a run's first start; refuse any other record later.

    ``record`` is e.g. ``{"data": data_record(...), "teacher_fingerprint": ...}``; a key whose
    value is None is not checked (evaluation loads no teacher). A mismatch raises
    :class:`RunRecordMismatch` naming each difference and the way out.
    """
    path = Path(folder) / RUN_RECORD
    if not path.is_file():
        write_json_atomic(path, record)
        return
    old = json.loads(path.read_text())
    new = {key: value for key, value in record.items() if value is not None}
    old = {key: old.get(key) for key in new}
    differences = _differences(old, new)
    if differences:
        raise RunRecordMismatch(
            f"The run folder {folder} was trained on other data or from another teacher than "
            f"this command uses ({'; '.join(differences)}). Refusing to resume, evaluate or "
            "report it on this data: train into another folder (run.sh --exp_dir, or a tag in "
            "the experiment folder name), or delete the folder to retrain it."
        )


class SessionClock:
    """Training wall time of a run over every session, killed sessions included.

    Each session appends an entry to ``folder/train_sessions.json`` and a daemon thread rewrites
    its elapsed time every ``heartbeat_s`` seconds, so a session killed (even by ``kill -9``) still
    counts up to its last heartbeat. Use as a context manager around ``Brain.fit``.
    """

    def __init__(self, folder: str | Path, heartbeat_s: float = 30.0) -> None:
        self.file = Path(folder) / SESSIONS
        self.heartbeat_s = heartbeat_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sessions: list[dict] = []
        self._start = 0.0

    def _beat(self, finished: bool = False) -> None:
        self._sessions[-1]["elapsed_s"] = time.perf_counter() - self._start
        self._sessions[-1]["finished"] = finished
        write_json_atomic(self.file, self._sessions)

    def _run(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self._beat()

    def __enter__(self) -> SessionClock:
        self._sessions = json.loads(self.file.read_text()) if self.file.is_file() else []
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        self._sessions.append({"started": started, "elapsed_s": 0.0, "finished": False})
        self._start = time.perf_counter()
        self._beat()
        self._thread = threading.Thread(target=self._run, daemon=True, name="session-clock")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._beat(finished=exc[0] is None)


def training_wall_time_s(folder: str | Path) -> float:
    """Training seconds of a run over all its sessions (``train_sessions.json``), 0 if none."""
    file = Path(folder) / SESSIONS
    if not file.is_file():
        return 0.0
    return sum(session["elapsed_s"] for session in json.loads(file.read_text()))


def training_status(folder: str | Path) -> dict:
    """``{finished, epochs_done, epochs, ...}`` from a run's ``train_info.json`` (or unstarted)."""
    info_file = Path(folder) / TRAIN_INFO
    if not info_file.is_file():
        return {"finished": False, "epochs_done": None, "epochs": None}
    info = json.loads(info_file.read_text())
    info.setdefault("finished", False)
    return info


def record_training(folder: str | Path, info: dict) -> None:
    """Write ``train_info.json``: what the run learnt from, how long, whether it finished."""
    write_json_atomic(Path(folder) / TRAIN_INFO, info)


def require_finished_teacher(teacher_folder: str | Path, allow_unfinished: bool) -> None:
    """Refuse (``UnfinishedTeacherError``) a teacher whose training has not finished.

    A teacher killed during its epoch 2 of 3 still has its epoch-1 checkpoint: distilling from it
    silently would give students of a teacher that is about to change.
    """
    status = training_status(teacher_folder)
    if status["finished"] or allow_unfinished:
        return
    progress = (
        f"{status['epochs_done']} of {status['epochs']} epochs done"
        if status["epochs_done"] is not None
        else "no finished training session recorded"
    )
    raise UnfinishedTeacherError(
        f"The teacher at {teacher_folder} has not finished training ({progress}). Finish it "
        "first (run.sh --stage 2), or distil from it as it is with "
        "run.sh --allow_unfinished_teacher true (YAML: allow_unfinished_teacher: True)."
    )


def teacher_cache_folder(hparams: dict, teacher: Teacher) -> Path:
    """``<exp_root>/cache/<key>``: the key covers the teacher, the front end, the taps and the
    training manifest (a re-prepared split gets a new cache). Refuses randomised inputs."""
    check_deterministic_inputs(hparams["random_input_settings"])
    key = cache_key(
        teacher.fingerprint,
        hparams["feature_settings"],
        hparams["teacher_taps"],
        manifest=hparams["train_annotation"],
    )
    return Path(hparams["exp_root"]) / "cache" / key


def load_teacher(hparams: dict) -> Teacher:
    """The frozen teacher of a KD run, refused while its training is unfinished."""
    require_finished_teacher(hparams["teacher_folder"], hparams["allow_unfinished_teacher"])
    return Teacher.from_experiment(
        hparams["teacher_folder"], taps=hparams["teacher_taps"], **hparams["teacher_selection"]
    )


def load_teacher_side(hparams: dict) -> tuple[Teacher | None, TeacherCache | None]:
    """The frozen teacher (and its cache when ``use_teacher_cache``) for a KD run."""
    if hparams["method"] == "none":
        return None, None
    teacher = load_teacher(hparams)
    if not hparams["use_teacher_cache"]:
        return teacher, None
    cache = TeacherCache(teacher_cache_folder(hparams, teacher))
    cache.check_covers(hparams["train_annotation"])
    return teacher, cache
