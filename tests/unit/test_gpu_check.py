"""tools/gpu_check: the prepared GPU check at tiny sizes on the CPU (as ``make test`` runs it):
every step group runs on real clips and prints its table line; a non-finite loss fails it."""

from __future__ import annotations

import os
import subprocess

import pytest
import torch
from conftest import REPO

from tools import gpu_check

CPU_PRECISIONS = ["fp32", "bf16"]  # as make test runs it (fp16: README, "GPU check")


def table(text: str) -> dict[tuple[str, str], list[str]]:
    """(precision, group) -> the cells after them, of each table row."""
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 8 and cells[1] in gpu_check.GROUPS:
            rows[(cells[0], cells[1])] = cells[2:]
    return rows


def test_every_group_runs_and_prints_its_line(capsys):
    assert gpu_check.main(["--device", "cpu", "--precisions", *CPU_PRECISIONS]) == 0
    out = capsys.readouterr().out
    rows = table(out)
    assert set(rows) == {(p, g) for p in CPU_PRECISIONS for g in gpu_check.GROUPS}
    for samples_per_s, busy, peak_mib, finite, skips, status in rows.values():
        assert float(samples_per_s) > 0 and float(peak_mib) > 0
        assert (busy, finite, skips, status) == ("n/a", "yes", "–", "ok")  # no GPU, no fp16
    assert out.splitlines()[-1] == "gpu_check: 12 of 12 groups passed"


@pytest.mark.parametrize("group", ["speaker teacher", "IML-KD cache (IG)", "FRAMI synthesis"])
def test_a_nonfinite_loss_fails_the_check(group, capsys):
    argv = ["--device", "cpu", "--precisions", "fp32", "--groups", "classifier teacher", group]
    assert gpu_check.main([*argv, "--inject_nonfinite", group]) == 1
    rows = table(capsys.readouterr().out)
    finite, _, status = rows[("fp32", group)][3:]
    assert finite == "no" and status.startswith("NON-FINITE")
    assert rows[("fp32", "classifier teacher")][3:] == ["yes", "–", "ok"]  # the others still run


@pytest.mark.slow
def test_the_wrapper_exits_with_the_checks_status():
    """tools/gpu_check.sh as make test calls it: 0 when every group passes, 1 otherwise."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [str(REPO / "tools" / "gpu_check.sh"), "--device", "cpu", "--precisions", "fp32"]
    command += ["--groups", "tagger teacher"]
    passed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert passed.returncode == 0, passed.stderr
    assert "| fp32 | tagger teacher |" in passed.stdout
    failed = subprocess.run(
        [*command, "--inject_nonfinite", "tagger teacher"], capture_output=True, env=env
    )
    assert failed.returncode == 1


def test_the_steps_the_fp16_scaler_skips_are_counted():
    """A step whose scaled gradients overflow is skipped (and counted); the next one is not."""
    precision = gpu_check.Precision("fp16", torch.device("cpu"))
    layer = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    precision.step(layer(torch.ones(1, 2)).sum() * 1e36, optimizer)  # x 65536: past float32
    precision.step(layer(torch.ones(1, 2)).sum(), optimizer)
    assert (precision.steps, precision.skipped) == (2, 1)
