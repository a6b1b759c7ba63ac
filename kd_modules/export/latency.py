"""CPU latency per second of audio of runners (eager, TorchScript, ONNX Runtime), interleaved.

Each measurement is the median over ``repeats`` timed calls after ``warmup`` untimed ones, of
one clip (batch 1), divided by the clip's duration: milliseconds of compute per second of audio.
The variants are timed in turn within each repeat (A B C A B C ...), so a load that comes and
goes on a shared machine falls on all of them alike. Thread counts are the caller's: a runner
is built for one thread or for all (:func:`kd_modules.export.runtime.onnx_session`,
``torch.set_num_threads``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

Runner = Callable[[np.ndarray, np.ndarray], np.ndarray]


def interleaved_latency(
    runners: dict[str, Runner],
    wav: np.ndarray,
    sample_rate: int,
    repeats: int = 20,
    warmup: int = 3,
    before_each: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """``{name: median ms per second of audio}`` of each runner on ``wav`` ``(S,)`` (batch 1).

    ``before_each(name)`` runs, untimed, before each call of runner ``name`` (e.g. to set
    PyTorch's thread count for it).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, not {repeats}")
    wavs, lengths = wav[None].astype(np.float32), np.array([wav.shape[0]], dtype=np.int64)
    seconds = wav.shape[0] / sample_rate
    times: dict[str, list[float]] = {name: [] for name in runners}
    for index in range(warmup + repeats):
        for name, runner in runners.items():
            if before_each is not None:
                before_each(name)
            start = time.perf_counter()
            runner(wavs, lengths)
            if index >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * float(np.median(spent)) / seconds for name, spent in times.items()}
