"""Stage 1's ``--nj``: the clips checked and converted by N worker processes write the manifests,
counts and audio of ``--nj 1``, with the progress bar's total, in all three prepare scripts.

On real speech: the VoxCeleb1-layout stand-in (LibriSpeech / VCTK clips of ../shared/data, with
its corrupt FLAC) and FSDD clips of tests/samples.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from conftest import FSDD_CLIPS

from kd_modules import conversion
from recipes.audio_tagging.local import prepare as tagging_prepare
from recipes.sound_classification.local import prepare as classification_prepare
from recipes.speaker_verification.local import make_standin as standin
from recipes.speaker_verification.local import prepare as speaker_prepare

PREPARES = (tagging_prepare, classification_prepare, speaker_prepare)
COUNT = re.compile(r"\b(\d+)/(\d+)\b")


@pytest.fixture(scope="module")
def vox_tree(tmp_path_factory) -> Path:
    if not standin.SHARED_DATA.is_dir():
        pytest.skip(f"{standin.SHARED_DATA} is not available")
    return standin.main(["--out", str(tmp_path_factory.mktemp("vox1") / "standin")])


@pytest.fixture
def pool_sizes(monkeypatch) -> list[int]:
    """The worker count of every process pool conversion starts (the pools still run)."""
    sizes: list[int] = []
    real_pool = conversion.multiprocessing.Pool

    def recording_pool(processes: int, **kwargs):
        sizes.append(processes)
        return real_pool(processes, **kwargs)

    monkeypatch.setattr(conversion.multiprocessing, "Pool", recording_pool)
    return sizes


def outputs(out_dir: Path) -> dict[str, bytes]:
    """Every file the prepare wrote, by relative path, with its own folder's path blanked."""
    return {
        str(path.relative_to(out_dir)): path.read_bytes().replace(bytes(out_dir), b"<out>")
        for path in sorted(out_dir.rglob("*"))
        if path.is_file()
    }


def bar_counts(stderr: str, desc: str) -> list[tuple[int, int]]:
    """The ``done/total`` of each line of the ``desc`` progress bar."""
    lines = [line for line in stderr.splitlines() if line.startswith(f"{desc}:")]
    return [tuple(map(int, COUNT.search(line).groups())) for line in lines]


def prepare_speakers(vox_tree: Path, out: Path, nj: int) -> Path:
    speaker_prepare.main(
        ["--dataset", "voxceleb1", "--data_root", str(vox_tree), "--out_dir", str(out)]
        + ["--convert", "soundfile", "--nj", str(nj)]
    )
    return out


def test_speaker_prepare_with_two_jobs_writes_what_one_job_writes(
    vox_tree: Path, tmp_path: Path, pool_sizes: list[int], capsys
):
    one = outputs(prepare_speakers(vox_tree, tmp_path / "nj1", 1))
    assert pool_sizes == []  # --nj 1 works in the prepare's own process
    capsys.readouterr()
    two = outputs(prepare_speakers(vox_tree, tmp_path / "nj2", 2))
    assert pool_sizes == [2]
    n_clips = len(list(vox_tree.glob("wav/*/*/*.*")))
    assert bar_counts(capsys.readouterr().err, "converting") == [(0, n_clips), (n_clips, n_clips)]
    assert one.keys() == two.keys()
    assert sum(name.endswith(".wav") for name in one) == n_clips - 1  # the corrupt FLAC skipped
    for name in one:
        assert one[name] == two[name], name  # manifests, trials, report and converted audio


def test_classification_prepare_with_three_jobs_writes_what_one_job_writes(
    tmp_path: Path, pool_sizes: list[int]
):
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    for clip in sorted(FSDD_CLIPS.glob("*_george_*"))[:40]:
        (recordings / clip.name).symlink_to(clip)
    written = {}
    for nj in (1, 3):
        out = tmp_path / f"nj{nj}"
        classification_prepare.main(
            ["--dataset", "fsdd", "--data_root", str(recordings), "--out_dir", str(out)]
            + ["--split", "seeded", "--convert", "soundfile", "--nj", str(nj)]
        )
        written[nj] = outputs(out)
    assert pool_sizes == [3]
    assert written[1] == written[3]
    assert sum(name.endswith(".wav") for name in written[1]) == 40


@pytest.mark.parametrize("prepare", PREPARES, ids=lambda module: module.__name__.split(".")[1])
def test_every_prepare_takes_nj_and_refuses_a_bad_one_in_one_line(prepare, capsys):
    common = ["--data_root", "x", "--out_dir", "y"]
    if prepare is not tagging_prepare:
        common += ["--dataset", prepare.DATASETS[0]]
    assert prepare.parse_args([*common, "--nj", "3"]).nj == 3
    assert prepare.parse_args(common).nj == max(1, min(4, os.cpu_count() or 1))  # 0: per core
    for bad in ("-2", "two"):
        with pytest.raises(SystemExit) as exit_info:
            prepare.parse_args([*common, "--nj", bad])
        assert exit_info.value.code == 2
        error = capsys.readouterr().err.splitlines()[-1]
        assert "--nj" in error and "non-negative integer" in error


def test_convert_clips_keeps_the_clips_order_with_workers(tmp_path: Path):
    """Results in the clips' order, whichever worker finished first (a short clip after long
    ones), with the unreadable clip's reason in its own place."""
    clips = sorted(FSDD_CLIPS.glob("*.flac"), key=lambda p: -p.stat().st_size)[:12]
    broken = tmp_path / "broken.flac"
    broken.write_bytes(clips[0].read_bytes()[:40])
    jobs = [(str(clip), None) for clip in [*clips[:6], broken, *clips[6:]]]
    serial = conversion.convert_clips(jobs, 16000, backend=None, nj=1)
    parallel = conversion.convert_clips(jobs, 16000, backend=None, nj=2)
    assert parallel == serial
    assert serial[6][0] is None and serial[6][1]
    assert len({duration for duration, _ in serial if duration}) > 1  # orders are told apart
