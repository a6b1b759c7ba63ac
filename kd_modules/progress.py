"""Progress bars for the long loops of a recipe (teacher cache, embedding, conversion...).

Every bar has a total, so it shows done/total and an ETA, and an ``initial`` count, so a resumed
loop starts at what it had done. On a terminal it is an ordinary tqdm bar; on any other stream (a
``nohup`` or ``> log 2>&1`` run, where tqdm's default would be silent or one line of carriage
returns) it writes one plain line every ``log_interval_s`` seconds, like SpeechBrain's epoch
lines, so a redirected log shows where a stage is without growing by a line per item.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TextIO

from tqdm import tqdm

LOG_INTERVAL_S = 30.0  # seconds between two lines of a bar written to a log (not a terminal)


class _LineStream:
    """A stream for tqdm that turns each redraw (``\\r`` + bar + padding) into one log line."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        for line in text.replace("\r", "\n").split("\n"):
            if line.strip():
                self.stream.write(line.rstrip() + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    initial: int = 0,
    desc: str | None = None,
    unit: str = "it",
    file: TextIO | None = None,
    log_interval_s: float = LOG_INTERVAL_S,
    disable: bool = False,
) -> tqdm:
    """A tqdm bar over ``iterable`` (or updated by hand) that counts from ``initial`` to ``total``.

    ``total`` defaults to ``len(iterable)``; ``file`` to stderr. When ``file`` is not a terminal
    the bar is written as newline-ended lines, at most one every ``log_interval_s`` seconds (plus
    the first and the last).
    """
    stream = sys.stderr if file is None else file
    if stream.isatty():
        return tqdm(
            iterable,
            total=total,
            initial=initial,
            desc=desc,
            unit=unit,
            file=stream,
            dynamic_ncols=True,
            disable=disable,
        )
    return tqdm(
        iterable,
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        file=_LineStream(stream),
        ascii=True,
        mininterval=log_interval_s,
        maxinterval=max(log_interval_s, 1.0),
        disable=disable,
    )
