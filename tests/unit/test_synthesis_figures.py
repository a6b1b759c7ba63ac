"""Stage 8's synthesis grid reads without a README: title (dataset, teacher, synthesisers' pool
seeds), axis labels, a colour bar per column. Drawn from pools laid out as the sound-classification
recipe lays them out, holding log-Mel features of real FSDD clips."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from conftest import FSDD_CLIPS
from speechbrain.lobes.features import Fbank

from kd_modules.dataio import read_audio
from kd_modules.synthesis import figures
from kd_modules.synthesis.pool import PoolBatch, SyntheticPool

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DIGITS = ("zero", "one", "two")


def real_features() -> dict[int, torch.Tensor]:
    """Digit -> log-Mel features (T, 40) of its first FSDD clip."""
    fbank = Fbank(sample_rate=8000, n_mels=40)
    return {
        digit: fbank(read_audio(FSDD_CLIPS / f"{digit}_george_10.flac", 8000)[None])[0]
        for digit in range(len(DIGITS))
    }


def write_pool(folder: Path, name: str, examples: dict[int, torch.Tensor]) -> None:
    """A finished pool of one sample per class (a batch each) and its run record."""
    pool = SyntheticPool(folder)
    plan = [PoolBatch(i, (label,), len(x), seed=i) for i, (label, x) in enumerate(examples.items())]
    for batch in plan:
        pool.write_batch(batch, examples[batch.targets[0]][None])
    pool.merge(plan)
    (folder / "run_record.json").write_text(json.dumps({"synthesizer": {"name": name}}))


def test_the_synthesis_grid_is_labelled(tmp_path: Path):
    exp = tmp_path / "exp" / "fsdd"
    pools = exp / "fold1" / "pool" / "xvector_large_seed1"
    real = real_features()
    write_pool(pools / "frami" / "seed3", "frami", {k: x.flip(0) for k, x in real.items()})
    write_pool(pools / "cmi" / "seed3", "cmi", {k: x.roll(7, 0) for k, x in real.items()})
    torch.save(real, pools / "frami" / "seed3" / figures.REAL_EXAMPLES)

    fig = figures.draw(exp, list(DIGITS))
    title = fig.get_suptitle()
    assert "fsdd" in title and "xvector_large_seed1" in title and "seed 3" in title, title
    panels = [axis for axis in fig.axes if axis.get_label() != "<colorbar>"]
    grid = [panels[row * 3 : row * 3 + 3] for row in range(len(DIGITS))]  # 3 columns
    assert [axis.get_title() for axis in grid[0]] == [
        "real (validation clip)",
        "cmi\nseed 3",
        "frami\nseed 3",
    ]
    assert [row[0].get_ylabel() for row in grid] == [f"{d}\nMel band" for d in DIGITS]
    assert {axis.get_xlabel() for axis in grid[-1]} == {"time frame"}
    colorbars = [axis for axis in fig.axes if axis.get_label() == "<colorbar>"]
    assert len(colorbars) == 3
    assert {axis.get_xlabel() for axis in colorbars} == {"log-Mel (teacher input)"}

    png = tmp_path / "grid.png"
    figures.main([str(exp), "--out", str(png)])
    assert png.read_bytes()[:8] == PNG_MAGIC
