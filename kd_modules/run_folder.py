"""A run folder's integrity: one process at a time, what it was trained on, and its clock.

- :func:`folder_lock`: one process at a time in a run folder (or a cache folder being built);
  a second one stops with a message naming the holder.
- :func:`check_run_record`: a run folder records the data (manifest hashes, prepare settings)
  and the teacher it was trained on, and refuses to resume or evaluate on anything else.
- :class:`SessionClock`: the training wall time of a run over all its sessions, killed ones
  included (a heartbeat file), for an honest ``wall_time_s``.
- :func:`training_status` / :func:`record_training`: ``train_info.json``, whether a run's
  training finished (a KD stage refuses a teacher that has not, ``kd_modules.teacher``).

Files only: nothing here loads a model or knows a dataset.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kd_modules.dataio import write_json_atomic
from kd_modules.hparams import OneLineError

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
# flock's errors on a filesystem that has no locks (Lustre mounted noflock, NFS without lockd)
NO_FLOCK = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS})
RUN_RECORD = "run_record.json"
TRAIN_INFO = "train_info.json"
SESSIONS = "train_sessions.json"
HEARTBEAT_S = 1.0  # SessionClock's interval: a killed session loses at most this much time


class FolderBusyError(RuntimeError):
    """Another live process holds the folder's lock."""


class RunRecordMismatch(OneLineError, RuntimeError):
    """A run folder was trained on other data (or from another teacher), or a pool synthesised
    with other settings, than asked now."""


# How a refused record is worded, by what the folder holds: its name, how it differs, the way out.
MISMATCH_WORDING = {
    "run": (
        "run folder",
        "was trained on other data or from another teacher than this command uses",
        "Refusing to resume, evaluate or report it on this data: train into another "
        "folder (run.sh --exp_dir, or a tag in the experiment folder name), or delete the "
        "folder to retrain it.",
    ),
    "pool": (
        "pool",
        "was synthesised with other settings or from another teacher than this command's",
        "Delete the folder (and the students distilled on it) to synthesise "
        "it again, run with the old settings, or use another experiment folder (run.sh "
        "--exp_dir).",
    ),
}


@contextlib.contextmanager
def folder_lock(
    folder: str | Path, what: str = "run folder", name: str = LOCK_NAME
) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (created if missing) while the block runs.

    The lock is ``fcntl.flock`` on ``folder/.lock``: the kernel releases it when the holder dies,
    even by ``kill -9``, so a stale lock never blocks a resume. The file names the holder (pid,
    host, global rank under torchrun, start time, command) for the message a second process
    gets. Under torchrun one process takes it for all (the global main process, or each rank its
    own ``name``). On a filesystem without ``flock`` the block runs unlocked, with a warning.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / name, "a+")  # noqa: SIM115 - held for the whole block
    try:
        locked = _lock(handle, folder, what)
    except BaseException:
        handle.close()
        raise
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(_holder())
        handle.flush()
        yield
    finally:
        if locked:
            fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _lock(handle, folder: Path, what: str) -> bool:
    """Take ``handle``'s exclusive flock: True once held, False where the filesystem has none
    (a warning says so); :class:`FolderBusyError`, naming the holder, while another has it."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        raise FolderBusyError(
            f"The {what} {folder} is in use by {holder}. Two runs in one folder would overwrite "
            "each other's checkpoints: wait for it to finish (or stop it), or use another folder."
        ) from None
    except OSError as error:
        if error.errno not in NO_FLOCK:
            raise
        logger.warning(
            "The filesystem of %s has no flock (%s): the %s is not locked, so nothing stops a "
            "second run in it; start one run per folder.",
            folder,
            os.strerror(error.errno),
            what,
        )
        return False
    return True


def _holder() -> str:
    """Who holds a lock: ``pid P on HOST [global rank R of N] since TIME (COMMAND)``."""
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    rank = os.environ.get("RANK")
    ranks = f" global rank {rank} of {os.environ.get('WORLD_SIZE', '?')}" if rank else ""
    command = " ".join(sys.argv)
    return f"pid {os.getpid()} on {socket.gethostname()}{ranks} since {started} ({command})"


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Human-readable list of the leaves that differ between two nested dicts."""
    lines = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            lines += _differences(before, after, f"{prefix}{key}.")
        elif before != after:
            lines.append(_change(f"{prefix}{key}", before, after))
    return lines


def _change(name: str, before: Any, after: Any) -> str:
    """``name: before -> after``, short: a hash by its first 8 digits, a long list (a pool's
    plan) by its lengths or its first differing entry, any other value cut to 60 characters."""
    if isinstance(before, str) and len(before) == 64:
        return f"{name} changed (sha256 {before[:8]} -> {str(after)[:8]})"
    if isinstance(before, list) and isinstance(after, list) and len(repr([before, after])) > 80:
        if len(before) != len(after):
            return f"{name}: {len(before)} -> {len(after)} entries"
        index = next(i for i, (a, b) in enumerate(zip(before, after)) if a != b)
        return _change(f"{name}[{index}]", before[index], after[index])
    return f"{name}: {_short(before)} -> {_short(after)}"


def _short(value: Any, width: int = 60) -> str:
    """``repr(value)``, cut to ``width`` characters."""
    text = repr(value)
    return text if len(text) <= width else f"{text[: width - 3]}..."


def check_run_record(
    folder: str | Path, record: dict, contents_exist: bool = False, what: str = "run"
) -> None:
    """Write ``folder/run_record.json`` on a run's first start; refuse any other record later.

    ``record`` is e.g. ``{"data": data_record(...), "teacher_fingerprint": ...}``; a key whose
    value is None is not checked (evaluation loads no teacher). A mismatch raises
    :class:`RunRecordMismatch`, one line naming each difference (old -> new) and the way out,
    worded for ``what`` the folder holds (a key of ``MISMATCH_WORDING``: ``run``, ``pool``).
    ``contents_exist`` says the folder already holds results (e.g. synthetic samples): without a
    record their origin is unknown, so they are refused rather than trusted.
    """
    path = Path(folder) / RUN_RECORD
    if not path.is_file():
        if contents_exist:
            raise RunRecordMismatch(
                f"The folder {folder} holds results but no {RUN_RECORD}: nothing says which "
                "teacher and settings made them, so they are not reused. Delete the folder to "
                "make them again, or use another folder."
            )
        write_json_atomic(path, record)
        return
    old = json.loads(path.read_text())
    new = {key: value for key, value in record.items() if value is not None}
    old = {key: old.get(key) for key in new}
    differences = _differences(old, new)
    if differences:
        noun, how, way_out = MISMATCH_WORDING[what]
        raise RunRecordMismatch(f"The {noun} {folder} {how} ({'; '.join(differences)}). {way_out}")


class SessionClock:
    """Training wall time of a run over every session, killed sessions included.

    Each session appends an entry to ``folder/train_sessions.json`` and a daemon thread rewrites
    its elapsed time every ``heartbeat_s`` seconds (default :data:`HEARTBEAT_S`, read when the
    clock is made), so a session killed (even by ``kill -9``) still counts up to its last
    heartbeat. The default (1 s; one small atomic write) is short next to any stage, even the demos'
    stages of seconds: at 30 s, a stage killed after 20 s of training was recorded as 1e-6 s.
    Use as a context manager
    around ``Brain.fit``.
    """

    def __init__(self, folder: str | Path, heartbeat_s: float | None = None) -> None:
        self.file = Path(folder) / SESSIONS
        self.heartbeat_s = HEARTBEAT_S if heartbeat_s is None else heartbeat_s
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
