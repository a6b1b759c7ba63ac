"""kd_modules.progress: bars with a total that a redirected log (not a terminal) shows too, and
the long loops that use it."""

from __future__ import annotations

import io
import re

from conftest import FSDD_CLIPS

from kd_modules.conversion import convert_clips
from kd_modules.progress import progress_bar

COUNT = re.compile(r"\b(\d+)/(\d+)\b")


def counts(text: str) -> list[tuple[int, int]]:
    """The ``done/total`` of each line, in order."""
    return [tuple(map(int, COUNT.search(line).groups())) for line in text.splitlines()]


def test_a_log_gets_one_line_per_interval_with_done_and_total():
    stream = io.StringIO()  # not a terminal, like a nohup log
    bar = progress_bar(
        total=5, initial=2, desc="teacher cache", unit="utt", file=stream, log_interval_s=0
    )
    for _ in range(3):
        bar.update(1)
    bar.close()
    text = stream.getvalue()
    assert "\r" not in text and text.endswith("\n")
    assert all(line.startswith("teacher cache:") for line in text.splitlines())
    assert counts(text)[:4] == [(2, 5), (3, 5), (4, 5), (5, 5)]  # starts at the resumed count


def test_a_log_is_written_at_a_modest_rate():
    """With the default interval (30 s) a quick loop writes its first and last lines only."""
    stream = io.StringIO()
    for _ in progress_bar(range(50), desc="test embeddings", unit="batch", file=stream):
        pass
    assert counts(stream.getvalue()) == [(0, 50), (50, 50)]


def test_prepare_conversion_counts_clips_in_a_log(capsys):
    """Stage 1's check/convert loop: its bar (off when stderr was not a terminal) is in the log."""
    clips = sorted(FSDD_CLIPS.glob("*.flac"))[:3]
    results = convert_clips([(str(clip), None) for clip in clips], 16000, backend=None)
    assert all(duration is not None for duration, _ in results)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("checking")]
    assert counts("\n".join(lines)) == [(0, 3), (3, 3)]
