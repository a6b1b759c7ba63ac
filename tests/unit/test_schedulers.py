"""EpochCosine: the data-free runs' learning-rate schedule (kd_modules.schedulers)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from kd_modules.schedulers import EpochCosine


def test_epoch_cosine_follows_the_cosine_and_ignores_the_metric():
    schedule = EpochCosine(initial_value=0.01, epochs=4, final_ratio=0.1)
    # rising validation losses would make NewBob halve the rate; the cosine ignores them
    pairs = [schedule(loss) for loss in (1.0, 2.0, 3.0, 4.0, 5.0)]
    expected = [0.001 + 0.009 * (1 + math.cos(math.pi * n / 4)) / 2 for n in range(5)]
    assert [old for old, _ in pairs] == pytest.approx([*expected[:4], 0.001])
    assert [new for _, new in pairs] == pytest.approx([*expected[1:], 0.001])
    assert pairs[0][0] == pytest.approx(0.01) and pairs[1][1] == pytest.approx(0.0055)


def test_epoch_cosine_resumes_from_a_checkpoint(tmp_path: Path):
    schedule = EpochCosine(0.01, epochs=10)
    for _ in range(3):
        schedule(None)
    schedule.save(tmp_path / "lr.json")
    resumed = EpochCosine(0.01, epochs=10)
    resumed.load(tmp_path / "lr.json")
    assert resumed(None) == schedule(None)


@pytest.mark.parametrize(
    ("epochs", "ratio", "message"),
    [(0, 0.0, "epochs must be >= 1"), (5, 1.5, "final_ratio must be in")],
)
def test_epoch_cosine_refuses_bad_settings(epochs, ratio, message):
    with pytest.raises(ValueError, match=message):
        EpochCosine(0.01, epochs, ratio)
