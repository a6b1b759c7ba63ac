"""Speaker-verification stage 1 on an unlabelled folder (``--dataset folder``): any tree of audio
files, built here from real LibriSpeech / VCTK clips, with nested folders, non-audio files, a
corrupt, an empty and a too-short file, and a file that is also a test file; the test trials come
from a labelled LibriSpeech tree (``--test_data_root``).

Expectations are recomputed from the trees themselves, not taken from the prepare script.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import soundfile
from conftest import SHARED_DATA

from kd_modules.conversion import PrepareError
from kd_modules.dataio import read_json
from recipes.speaker_verification.local import prepare

LIBRI = SHARED_DATA / "librispeech_subset" / "LibriSpeech"
VCTK = SHARED_DATA / "vctk_subset" / "wavs"


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> tuple[Path, Path, set[str]]:
    """(unlabelled root, LibriSpeech test root, ids of the good training files)."""
    if not LIBRI.is_dir() or not VCTK.is_dir():
        pytest.skip(f"{SHARED_DATA} is not available")
    base = tmp_path_factory.mktemp("folder")
    test_root = base / "labelled" / "LibriSpeech"
    test_root.mkdir(parents=True)
    (test_root / "test-other").symlink_to(LIBRI / "test-other")
    root = base / "unlabelled"
    flacs = sorted((LIBRI / "train-clean-100").glob("*/*/*.flac"))[:3]
    good = {
        "a/b/first": flacs[0],
        "a/second": flacs[1],
        "c/d/e/third": flacs[2],
        "vctk/p225/fourth": sorted(VCTK.glob("p225/*"))[0],
    }
    for rel, src in good.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, (root / rel).with_suffix(src.suffix))
    audio, rate = soundfile.read(flacs[0])
    soundfile.write(root / "a" / "as_wav.wav", audio[: 4 * rate], rate)  # WAV too
    soundfile.write(root / "c" / "short.flac", audio[: int(0.3 * rate)], rate)
    data = flacs[1].read_bytes()
    (root / "c" / "corrupt.flac").write_bytes(data[: len(data) // 3])  # header, then cut
    (root / "c" / "d" / "empty.wav").write_bytes(b"")
    (root / "README.txt").write_text("not audio")
    (root / "a" / "b" / "cover.png").write_bytes(b"\x89PNG\r\n")
    test_file = sorted((LIBRI / "test-other").glob("*/*/*.flac"))[0]
    (root / "leak.flac").symlink_to(test_file)  # a test utterance inside the training tree
    return root, test_root.parent, {*good, "a/as_wav"}


def run(root: Path, out: Path, *extra: str) -> Path:
    prepare.main(
        ["--dataset", "folder", "--data_root", str(root), "--out_dir", str(out)]
        + ["--convert", "none", *extra]
    )
    return out


@pytest.fixture(scope="module")
def prepared(trees, tmp_path_factory) -> Path:
    root, test_root, _ = trees
    return run(root, tmp_path_factory.mktemp("folder_out"), "--test_data_root", str(test_root))


def test_every_good_audio_file_and_nothing_else_is_trained_on(prepared, trees):
    root, _, good = trees
    segments = {**read_json(prepared / "train.json"), **read_json(prepared / "valid.json")}
    assert {seg_id.rsplit("_", 1)[0] for seg_id in segments} == good
    assert {entry["spk_label"] for entry in segments.values()} == {-1}
    assert {entry["spk_id"] for entry in segments.values()} == good  # each file its own
    for entry in segments.values():
        assert Path(entry["wav"]).resolve().is_relative_to(root.resolve())
    assert read_json(prepared / "valid.json")  # carved from the files' segments


def test_bad_files_are_skipped_and_counted(prepared, trees):
    root, _, _ = trees
    report = read_json(prepared / "prepare_report.json")
    assert report["labelled"] is False
    assert sorted(report["not_audio_files"]) == ["README.txt", "a/b/cover.png"]
    assert report["not_audio"] == 2
    corrupt = sorted(Path(f).relative_to(root).as_posix() for f in report["corrupt_files"])
    assert corrupt == ["c/corrupt.flac", "c/d/empty.wav"] and report["corrupt"] == 2
    assert report["too_short_ids"] == ["c/short"]
    assert [Path(p).name for p in report["train_files_in_test"]] == ["leak.flac"]


def test_no_speakers_and_data_info_says_unlabelled(prepared):
    assert read_json(prepared / "speakers.json") == []
    info = read_json(prepared / "data_info.json")
    assert info["dataset"] == "folder" and info["outputs"] == 0 and info["labelled"] is False


def test_trials_come_from_the_labelled_test_set(prepared):
    test = read_json(prepared / "test.json")
    speakers = {p.name for p in (LIBRI / "test-other").iterdir()}
    assert {entry["spk_id"] for entry in test.values()} == speakers
    lines = [line.split() for line in (prepared / "trials.txt").read_text().splitlines()]
    assert all(enrol in test and probe in test for _, enrol, probe in lines)
    for label, enrol, probe in lines:
        assert (label == "1") == (test[enrol]["spk_id"] == test[probe]["spk_id"])
    assert sum(label == "1" for label, _, _ in lines) * 2 == len(lines)


def test_a_rerun_with_the_same_arguments_is_skipped(prepared, trees):
    root, test_root, _ = trees
    before = (prepared / ".done").stat().st_mtime_ns
    run(root, prepared, "--test_data_root", str(test_root))
    assert (prepared / ".done").stat().st_mtime_ns == before


def test_refusals_name_the_option(trees, tmp_path):
    root, test_root, _ = trees
    with pytest.raises(PrepareError, match="--dataset folder needs --test_data_root"):
        run(root, tmp_path / "a")
    with pytest.raises(PrepareError, match="--train_subsets: not an option for --dataset folder"):
        run(root, tmp_path / "b", "--test_data_root", str(test_root), "--train_subsets", "x")
    with pytest.raises(PrepareError, match="--test_data_root: not an option"):
        prepare.main(
            ["--dataset", "librispeech", "--data_root", str(test_root), "--out_dir", str(tmp_path)]
            + ["--test_data_root", str(test_root)]
        )
    with pytest.raises(PrepareError, match="is not a folder"):
        run(tmp_path / "nowhere", tmp_path / "c", "--test_data_root", str(test_root))
