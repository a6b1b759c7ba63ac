"""Stage 1's audio work for every recipe: check each clip, convert it once, count the bad ones.

A prepare script hands its clips to :func:`check_and_convert` (or lists ``(source,
destination)`` pairs for :func:`convert_clips`), which decodes every source in full once (a
truncated FLAC with a valid header counts as unreadable too), converts it to mono 16-bit audio at
the recipe's rate (SoX when available, else soundfile + torchaudio) unless it is up to date, and
returns each clip's duration or the reason it is unusable. ``--nj N`` (as Kaldi's and ESPnet's)
spreads the clips over N worker processes; the results come back in the clips' order, so the
manifests and counts are those of ``--nj 1``. Nothing here knows a dataset.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import sys
from collections.abc import Callable
from pathlib import Path

from kd_modules.dataio import (
    AudioReadError,
    audio_info,
    convert_audio,
    remove_stale_temp_files,
    sox_available,
    verify_audio,
)
from kd_modules.progress import progress_bar

logger = logging.getLogger(__name__)

AUTO_MAX_JOBS = 4  # --nj 0: one job per CPU core, at most this many (decoding is CPU-bound)


class PrepareError(RuntimeError):
    """The data cannot give what was asked for (no metadata, a split without audio, ...)."""


def run_prepare(main: Callable[[], None]) -> None:
    """A prepare script's entry point: INFO logging with timestamps; a PrepareError ends it as
    one logged error line and exit status 1 (no traceback: the data, not the code, is wrong)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        main()
    except PrepareError as error:
        logger.error("%s", error)
        sys.exit(1)


def conversion_backend(choice: str) -> str | None:
    """The backend for ``--convert`` auto | sox | soundfile | none (None: no conversion)."""
    if choice == "none":
        logger.info("no conversion: manifests point at the original files")
        return None
    available = sox_available()
    if choice == "sox" and not available:
        raise PrepareError("--convert sox needs the SoX binary on PATH and the sox package")
    backend = choice if choice != "auto" else ("sox" if available else "soundfile")
    if backend == "sox":
        logger.info("converting with SoX")
    elif choice == "auto":
        logger.info("SoX binary not found: converting with soundfile + torchaudio resampler")
    else:
        logger.info("converting with soundfile + torchaudio resampler")
    return backend


def remove_stale_conversions(audio_dir: Path) -> list[Path]:
    """Remove the temporary files a killed conversion left in ``audio_dir``; log them."""
    stale = remove_stale_temp_files(audio_dir)
    if stale:
        logger.warning(
            "removed %d temporary file(s) left by an interrupted run in %s", len(stale), audio_dir
        )
    return stale


def convert_clips(
    clips: list[tuple[str, str | None]], sample_rate: int, backend: str | None, nj: int = 1
) -> list[tuple[float | None, str | None]]:
    """Check (and convert) every ``(source, destination)`` clip, in ``nj`` worker processes.

    ``destination`` None (or ``backend`` None) only checks the source. Returns, per clip in
    order (whatever ``nj``), ``(duration_s, None)`` for a usable clip or ``(None, reason)`` for
    an unreadable one. ``nj`` 1 works in this process; more starts a pool of ``min(nj, clips)``
    workers of one torch thread each. A progress bar counts the clips (on stderr; lines every
    30 s when it is a log).
    """
    if nj < 1:
        raise ValueError(f"nj must be a positive number of jobs, got {nj}")
    jobs = [(src, None if backend is None else dst, sample_rate, backend) for src, dst in clips]
    desc = "checking" if backend is None else "converting"
    if nj == 1 or len(jobs) < 2:
        return list(progress_bar(map(_process_clip, jobs), total=len(jobs), desc=desc, unit="clip"))
    with multiprocessing.Pool(min(nj, len(jobs)), initializer=_init_worker) as pool:
        results = pool.imap(_process_clip, jobs, chunksize=_chunksize(len(jobs), nj))
        return list(progress_bar(results, total=len(jobs), desc=desc, unit="clip"))


def _chunksize(n_jobs: int, nj: int) -> int:
    """Clips per task sent to a worker: about 4 tasks per worker (few round trips), at most 8
    clips (the bar moves and a slow clip holds few others back)."""
    return max(1, min(8, n_jobs // (4 * nj)))


def add_nj_option(parser: argparse.ArgumentParser) -> None:
    """A prepare script's ``--nj``: the number of processes checking and converting clips."""
    parser.add_argument(
        "--nj",
        type=_job_count,
        default="0",  # a string, so argparse resolves it through _job_count
        help="parallel jobs checking and converting clips, as Kaldi's --nj "
        f"(default 0: one per CPU core, at most {AUTO_MAX_JOBS})",
    )


def _job_count(text: str) -> int:
    """argparse's type for ``--nj``: an integer >= 1, or 0 for one job per CPU core (at most
    AUTO_MAX_JOBS); anything else is a one-line usage error."""
    value = int(text) if text.isdigit() else -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return value or max(1, min(AUTO_MAX_JOBS, os.cpu_count() or 1))


def check_and_convert(
    clips: list[dict],
    destination: Callable[[dict], Path],
    sample_rate: int,
    choice: str,
    nj: int = 1,
) -> tuple[list[dict], list[dict]]:
    """Check (and convert, per ``--convert`` ``choice``) each clip's ``src`` to
    ``destination(clip)`` in ``nj`` processes; set ``wav`` (the converted copy, or the source
    without conversion) and ``duration`` (seconds, 4 decimals) on the usable ones. Returns
    (usable, unreadable) clips in order; each unreadable one is logged with its reason."""
    backend = conversion_backend(choice)
    jobs = [(str(clip["src"]), str(destination(clip))) for clip in clips]
    usable, unreadable = [], []
    for clip, (src, dst), (duration, error) in zip(
        clips, jobs, convert_clips(jobs, sample_rate, backend, nj)
    ):
        if error is not None:
            logger.warning("skipping %s: %s", src, error)
            unreadable.append(clip)
            continue
        clip["wav"] = str(Path(dst if backend else src).resolve())
        clip["duration"] = round(duration, 4)
        usable.append(clip)
    logger.info("%d clips readable, %d unreadable skipped", len(usable), len(unreadable))
    return usable, unreadable


def _init_worker() -> None:
    """One torch thread per worker: nj workers x N threads would oversubscribe the CPUs."""
    import torch

    torch.set_num_threads(1)


def _process_clip(job: tuple[str, str | None, int, str | None]) -> tuple[float | None, str | None]:
    """(duration, None) for a good clip, converted first if asked; (None, reason) for a bad one."""
    src, dst, sample_rate, backend = job
    try:
        if dst is None:
            return verify_audio(src).duration, None
        if not _up_to_date(src, dst, sample_rate):
            convert_audio(src, dst, sample_rate, backend)
        return audio_info(dst).duration, None
    except AudioReadError as err:
        return None, err.reason


def _up_to_date(src: str, dst: str, sample_rate: int) -> bool:
    """A converted copy newer than its source, mono, at the wanted rate."""
    if not os.path.isfile(dst) or os.path.getmtime(dst) < os.path.getmtime(src):
        return False
    try:
        info = audio_info(dst)
    except AudioReadError:
        return False
    return info.sample_rate == sample_rate and info.channels == 1
