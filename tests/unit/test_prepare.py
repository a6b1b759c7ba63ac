"""Sound-classification prepare (official layouts -> manifests) and kd_modules.splits."""

import logging
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile

from kd_modules import conversion
from kd_modules.dataio import audio_info, read_audio, read_json
from kd_modules.splits import stratified_group_split
from recipes.sound_classification.local import prepare

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
SAMPLES = REPO / "tests" / "samples"
RECIPE = REPO / "recipes" / "sound_classification"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"{SHARED} (the shared real-audio folder) is absent"
)


def run(dataset, data_root, out_dir, *extra):
    prepare.main(
        ["--dataset", dataset, "--data_root", str(data_root), "--out_dir", str(out_dir), *extra]
    )
    return out_dir


def splits_of(out_dir, fold):
    return {r: read_json(out_dir / f"fold{fold}" / f"{r}.json") for r in ("train", "valid", "test")}


def assert_disjoint(splits):
    """No id and no group shared between two splits; every entry well formed."""
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        assert not set(splits[a]) & set(splits[b])
        assert not {e["group"] for e in splits[a].values()} & {
            e["group"] for e in splits[b].values()
        }
    for entries in splits.values():
        for entry in entries.values():
            assert Path(entry["wav"]).is_absolute() and Path(entry["wav"]).is_file()
            assert entry["duration"] > 0 and isinstance(entry["label"], str)


# --- splits -------------------------------------------------------------------------------


def _toy(n=600, n_groups=120, n_classes=6, seed=0):
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, n_groups, n).tolist()
    labels = [g % n_classes for g in groups]  # one class per group, as with source recordings
    return labels, groups


FRACTIONS = {"train": 0.7, "valid": 0.1, "test": 0.2}


def test_split_is_deterministic_disjoint_and_complete():
    labels, groups = _toy()
    first = stratified_group_split(labels, groups, FRACTIONS, seed=3)
    assert first == stratified_group_split(labels, groups, FRACTIONS, seed=3)
    assert first != stratified_group_split(labels, groups, FRACTIONS, seed=4)
    assert sorted(i for v in first.values() for i in v) == list(range(len(labels)))
    owners = {s: {groups[i] for i in v} for s, v in first.items()}
    assert not owners["train"] & owners["valid"] and not owners["train"] & owners["test"]
    assert not owners["valid"] & owners["test"]


def test_split_is_stratified():
    labels, groups = _toy(n=3000, n_groups=600)
    result = stratified_group_split(labels, groups, FRACTIONS, seed=1)
    totals = Counter(labels)
    for split, fraction in FRACTIONS.items():
        per_class = Counter(labels[i] for i in result[split])
        for c, total in totals.items():
            assert per_class[c] / total == pytest.approx(fraction, abs=0.05)


def test_small_classes_reach_test():
    labels = ["a", "a", "b", "b", "b", "c"]
    result = stratified_group_split(labels, list(range(6)), FRACTIONS, 0, cover=("train", "test"))
    in_test = {labels[i] for i in result["test"]}
    in_train = {labels[i] for i in result["train"]}
    assert in_test == {"a", "b"} and in_train == {"a", "b", "c"}


def test_multi_class_groups_stay_whole():
    labels = [d for _ in range(20) for d in range(10)]  # 20 speakers x 10 digits
    groups = [s for s in range(20) for _ in range(10)]
    result = stratified_group_split(labels, groups, {"train": 0.8, "valid": 0.2}, seed=0)
    assert len({groups[i] for i in result["valid"]}) == 4
    assert {labels[i] for i in result["valid"]} == set(range(10))


# --- prepare on the real clips ---------------------------------------------------------------


@needs_shared
def test_esc50_official_fold4(tmp_path):
    out = run("esc50", SHARED / "esc50", tmp_path / "esc50", "--folds", "4", "--convert", "none")
    splits = splits_of(out, 4)
    assert_disjoint(splits)
    assert len(splits["test"]) == 201 and all(i.startswith("4-") for i in splits["test"])
    assert splits["valid"] and not any(i.startswith("4-") for i in splits["train"])
    assert not any(i.startswith("4-") for i in splits["valid"])
    labels = read_json(out / "labels.json")
    assert len(labels) == 50 and labels[0] == "dog"
    for entry in splits["test"].values():
        assert labels[entry["label_id"]] == entry["label"]
    report = read_json(out / "prepare_report.json")
    assert (report["rows"], report["present"], report["missing"]) == (2000, 220, 1780)
    assert not (out / "fold1").exists()


@needs_shared
@pytest.mark.parametrize(
    "dataset, root, extra, message",
    [
        ("fsdd", "fsdd", [], "FSDD fold 1: the test split"),
        ("audiomnist", "audiomnist", ["--folds", "4"], "AudioMNIST fold 4: the test split"),
    ],
)
def test_official_fold_without_audio_is_an_error(tmp_path, dataset, root, extra, message):
    with pytest.raises(prepare.PrepareError, match=message) as err:
        run(dataset, SHARED / root, tmp_path / "out", "--convert", "none", *extra)
    assert "--split seeded" in str(err.value)
    assert not (tmp_path / "out" / ".done").exists()


@needs_shared
def test_urbansound8k_fold_without_audio_is_an_error(tmp_path):
    """The first official fold the shared copy holds no audio of (5 today): its test split."""
    absent = min(set(range(1, 11)) - set(us8k_clips_present()))
    with pytest.raises(
        prepare.PrepareError, match=f"UrbanSound8K fold {absent}: the test split"
    ) as err:
        run(
            "urbansound8k",
            SHARED / "urbansound8k",
            tmp_path / "out",
            "--convert",
            "none",
            "--folds",
            str(absent),
        )
    assert "--split seeded" in str(err.value)
    assert str(Path("audio") / f"fold{absent}") in str(err.value)
    assert not (tmp_path / "out" / ".done").exists()


def us8k_clips_present() -> dict[int, set[str]]:
    """The ids of the UrbanSound8K clips ../shared/data holds, by official fold (what tests expect
    follows the data, so a copy that grows or shrinks needs no edit here)."""
    audio = SHARED / "urbansound8k" / "UrbanSound8K" / "audio"
    return {
        int(d.name[len("fold") :]): {f.stem for f in d.iterdir() if f.suffix in (".wav", ".flac")}
        for d in audio.glob("fold*")
    }


@needs_shared
def test_urbansound8k_train_side_without_audio_is_an_error(tmp_path):
    """Only fold 2's audio: its test split is there, its training side (folds 1, 3-10) is not."""
    src = SHARED / "urbansound8k" / "UrbanSound8K"
    root = tmp_path / "UrbanSound8K"
    (root / "audio").mkdir(parents=True)
    (root / "metadata").symlink_to(src / "metadata")
    (root / "audio" / "fold2").symlink_to(src / "audio" / "fold2")
    with pytest.raises(prepare.PrepareError, match="UrbanSound8K fold 2: the train split") as err:
        run("urbansound8k", root, tmp_path / "out", "--convert", "none", "--folds", "2")
    assert "--split seeded" in str(err.value) and str(root / "audio") in str(err.value)


@needs_shared
def test_urbansound8k_official_fold2_tests_on_fold2_and_trains_on_the_rest(tmp_path):
    """--folds 2 on the shared copy: every fold-2 clip present is a test clip, the clips of the
    other folds present (fold 1's) are split into train and valid by fsID, and no recording is
    on both sides."""
    present = us8k_clips_present()
    assert present.get(2), "the shared UrbanSound8K copy has no fold 2 audio"
    out = run(
        "urbansound8k",
        SHARED / "urbansound8k",
        tmp_path / "us8k",
        "--folds",
        "2",
        "--convert",
        "none",
    )
    splits = splits_of(out, 2)
    assert_disjoint(splits)
    assert set(splits["test"]) == present[2]
    others = set().union(*(ids for fold, ids in present.items() if fold != 2))
    assert set(splits["train"]) | set(splits["valid"]) == others
    assert len(splits["valid"]) == pytest.approx(0.1 * len(others), rel=0.35)
    assert not (out / "fold1").exists()
    report = read_json(out / "prepare_report.json")
    assert report["present"] == sum(len(ids) for ids in present.values())
    assert report["splits"]["fold2"]["test"] == len(present[2])


@needs_shared
def test_urbansound8k_seeded_on_the_clips_present(tmp_path):
    out = run(
        "urbansound8k",
        SHARED / "urbansound8k",
        tmp_path / "us8k",
        "--split",
        "seeded",
        "--convert",
        "none",
    )
    splits = splits_of(out, 1)
    assert_disjoint(splits)
    sizes = {k: len(v) for k, v in splits.items()}
    n_present = sum(len(ids) for ids in us8k_clips_present().values())
    assert sum(sizes.values()) == n_present
    assert sizes["test"] == pytest.approx(0.2 * n_present, rel=0.25)
    assert {e["label"] for e in splits["test"].values()} == set(read_json(out / "labels.json"))


@pytest.fixture
def partial_us8k(tmp_path):
    """30 real fold-1 clips in the official layout, a stereo 44.1 kHz WAV and a corrupt file."""
    src = SHARED / "urbansound8k" / "UrbanSound8K"
    root = tmp_path / "UrbanSound8K"
    (root / "audio" / "fold1").mkdir(parents=True)
    shutil.copytree(src / "metadata", root / "metadata")
    clips = sorted((src / "audio" / "fold1").glob("*.flac"))
    for clip in clips[:30]:
        shutil.copyfile(clip, root / "audio" / "fold1" / clip.name)
    stereo = read_audio(clips[30], 44100).numpy()
    soundfile.write(
        root / "audio" / "fold1" / f"{clips[30].stem}.wav",
        np.stack([stereo, 0.5 * stereo], axis=1),
        44100,
    )
    (root / "audio" / "fold1" / f"{clips[31].stem}.wav").write_bytes(b"\xffcorrupt" * 64)
    return root, clips[30].stem, clips[31].stem


@needs_shared
def test_partial_copy_with_stereo_and_corrupt_clips(tmp_path, partial_us8k, caplog):
    root, stereo_id, corrupt_id = partial_us8k
    caplog.set_level(logging.INFO)
    out = tmp_path / "prepared"
    run("urbansound8k", tmp_path, out, "--split", "seeded")  # the parent of UrbanSound8K/
    report = read_json(out / "prepare_report.json")
    assert (report["rows"], report["present"], report["missing"]) == (8732, 32, 8700)
    assert report["corrupt"] == 1 and report["corrupt_files"][0].endswith(f"{corrupt_id}.wav")
    assert corrupt_id in caplog.text
    splits = splits_of(out, 1)
    assert_disjoint(splits)
    entries = {k: v for s in splits.values() for k, v in s.items()}
    assert len(entries) == 31 and corrupt_id not in entries
    for entry in entries.values():
        assert entry["wav"].startswith(str((out / "audio").resolve()))
        info = audio_info(entry["wav"])
        assert (info.sample_rate, info.channels) == (16000, 1)
    assert entries[stereo_id]["duration"] == pytest.approx(4.0, abs=1e-3)

    converted = {p: p.stat().st_mtime_ns for p in (out / "audio").rglob("*.wav")}
    done = (out / ".done").stat().st_mtime_ns
    caplog.clear()
    run("urbansound8k", tmp_path, out, "--split", "seeded")
    assert "already prepared" in caplog.text and (out / ".done").stat().st_mtime_ns == done
    run("urbansound8k", tmp_path, out, "--split", "seeded", "--seed", "2")
    assert read_json(out / ".done")["seed"] == 2
    assert {p: p.stat().st_mtime_ns for p in (out / "audio").rglob("*.wav")} == converted


# --- prepare on the repository's samples -----------------------------------------------------


@pytest.mark.parametrize("dataset", ["esc50", "urbansound8k", "fsdd"])
def test_seeded_split_of_each_sample(tmp_path, dataset):
    out = run(
        dataset, SAMPLES / dataset, tmp_path / dataset, "--split", "seeded", "--convert", "none"
    )
    splits = splits_of(out, 1)
    assert_disjoint(splits)
    assert all(splits.values())
    expected = {"esc50": 20, "urbansound8k": 20, "fsdd": 480}[dataset]
    assert sum(len(s) for s in splits.values()) == expected
    assert {e["label"] for e in splits["test"].values()} == {
        e["label"] for e in splits["train"].values()
    }


@pytest.mark.slow
def test_audiomnist_paper_folds_via_cli(tmp_path):
    """The CLI as run.sh calls it: official speaker folds of the samples, soundfile conversion."""
    out = tmp_path / "audiomnist"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "local/prepare.py",
        "--dataset",
        "audiomnist",
        "--data_root",
        str(SAMPLES / "audiomnist" / "AudioMNIST"),
        "--out_dir",
        str(out),
        "--convert",
        "soundfile",
        "--folds",
        "1",
        "2",
    ]
    done = subprocess.run(cmd, cwd=RECIPE, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "converting with soundfile" in done.stderr
    fold1 = splits_of(out, 1)
    assert sorted(fold1["test"]) == ["3_51_37", "9_42_10"]  # speakers 42 and 51: paper split 0
    assert not fold1["valid"] and len(fold1["train"]) == 4
    assert sorted(splits_of(out, 2)["test"]) == ["0_01_0", "6_56_49"]
    assert audio_info(fold1["test"]["3_51_37"]["wav"]).sample_rate == 16000

    failed = subprocess.run(
        cmd[:-2] + ["4"], cwd=RECIPE, env=env, capture_output=True, text=True, timeout=120
    )
    assert failed.returncode == 1 and "AudioMNIST fold 4: the test split" in failed.stderr


def test_data_info_has_the_classes_folds_and_files_later_stages_read(tmp_path):
    """Stage 1 writes the facts run.sh reads (kd_modules.data_info): the classes as labels.json
    has them and their number, the split and the folds prepared, and every file a run reads."""
    root = SAMPLES / "audiomnist" / "AudioMNIST"
    out = run("audiomnist", root, tmp_path / "am", "--convert", "none", "--folds", "1", "2")
    info = read_json(out / "data_info.json")
    labels = read_json(out / "labels.json")
    assert (info["dataset"], info["classes"], info["outputs"]) == ("audiomnist", labels, 10)
    assert (info["split"], info["folds"]) == ("official", [1, 2])
    manifests = {f"fold{k}/{role}.json" for k in (1, 2) for role in ("train", "valid", "test")}
    assert set(info["files"]) == manifests | {"labels.json", ".done"}
    assert all((out / name).is_file() for name in info["files"])


def test_without_sox_converts_with_soundfile(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(conversion, "sox_available", lambda: False)
    with pytest.raises(prepare.PrepareError, match="--convert sox needs the SoX binary"):
        run(
            "audiomnist", SAMPLES / "audiomnist", tmp_path / "a", "--folds", "1", "--convert", "sox"
        )
    out = run("audiomnist", SAMPLES / "audiomnist", tmp_path / "b", "--folds", "1")
    assert "SoX binary not found: converting with soundfile" in caplog.text
    assert len(list((out / "audio").rglob("*.wav"))) == 6


# --- hardening: short clips, stale temporary files, truncated FLAC ---------------------------

FSDD_RECORDINGS = SAMPLES / "fsdd" / "free-spoken-digit-dataset" / "recordings"


@pytest.fixture
def george_fsdd(tmp_path):
    """A partial FSDD copy: speaker george, digits 0-9, takes 5-7 (30 real clips)."""
    folder = tmp_path / "recordings"
    folder.mkdir()
    for digit in range(10):
        for take in (5, 6, 7):
            name = f"{digit}_george_{take}.flac"
            shutil.copyfile(FSDD_RECORDINGS / name, folder / name)
    return folder


def manifest_entries(out_dir):
    return {k: v for s in splits_of(out_dir, 1).values() for k, v in s.items()}


@pytest.mark.parametrize("convert", ["none", "soundfile"])
def test_clip_below_min_duration_is_skipped_and_counted(tmp_path, george_fsdd, convert, caplog):
    wav, rate = soundfile.read(FSDD_RECORDINGS / "5_george_8.flac")
    soundfile.write(george_fsdd / "5_george_40.flac", wav[: int(0.01 * rate)], rate)
    at_minimum = round(prepare.MIN_DURATION_S * rate)
    soundfile.write(george_fsdd / "5_george_41.flac", wav[:at_minimum], rate)
    caplog.set_level(logging.INFO)
    out = run("fsdd", george_fsdd, tmp_path / "out", "--split", "seeded", "--convert", convert)
    report = read_json(out / "prepare_report.json")
    assert (report["too_short"], report["too_short_ids"]) == (1, ["5_george_40"])
    assert (report["present"], report["corrupt"], report["used"]) == (32, 0, 31)
    assert report["min_duration_s"] == prepare.MIN_DURATION_S == 0.14
    entries = manifest_entries(out)
    assert "5_george_40" not in entries and len(entries) == 31
    assert entries["5_george_41"]["duration"] == pytest.approx(0.14)
    assert "5_george_40.flac: 0.0100 s is shorter than --min_duration_s 0.14" in caplog.text


def test_min_duration_option_of_run_sh_reaches_prepare():
    script = (RECIPE / "run.sh").read_text()
    assert f"\nmin_duration_s={prepare.MIN_DURATION_S} " in script
    assert '--min_duration_s "$min_duration_s"' in script and " min_duration_s " in script


def test_stale_temp_file_of_a_killed_run_is_removed(tmp_path, george_fsdd, caplog):
    out = run("fsdd", george_fsdd, tmp_path / "out", "--split", "seeded", "--convert", "soundfile")
    killed = out / "audio" / "3_george_6.wav"
    stale = killed.with_name(".3_george_6.0badcafe.tmp.wav")
    stale.write_bytes(killed.read_bytes()[: killed.stat().st_size // 2])  # a half-written file
    killed.unlink()
    (out / ".done").unlink()
    caplog.set_level(logging.INFO)
    run("fsdd", george_fsdd, out, "--split", "seeded", "--convert", "soundfile")
    assert not stale.exists() and "removed 1 temporary file(s)" in caplog.text
    assert sorted(p.name for p in (out / "audio").iterdir()) == sorted(
        f"{p.stem}.wav" for p in george_fsdd.iterdir()
    )
    assert read_json(out / "prepare_report.json")["stale_temp_files_removed"] == 1
    entries = manifest_entries(out)
    assert len(entries) == 30
    assert read_audio(killed).numel() == audio_info(george_fsdd / "3_george_6.flac").num_frames


@pytest.mark.parametrize("convert", ["none", "sox"])
def test_truncated_flac_is_skipped_as_corrupt(tmp_path, convert, caplog):
    """Half of a real 5 s FLAC: the header is intact; SoX would decode 2.3 s of it silently."""
    if convert == "sox" and not conversion.sox_available():
        pytest.skip("SoX binary or sox package not available")
    root = shutil.copytree(SAMPLES / "esc50" / "ESC-50-master", tmp_path / "ESC-50-master")
    truncated = root / "audio" / "4-183992-A-0.flac"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    assert audio_info(truncated).duration == 5.0
    out = run("esc50", root, tmp_path / "out", "--split", "seeded", "--convert", convert)
    report = read_json(out / "prepare_report.json")
    assert (report["corrupt"], report["corrupt_files"]) == (1, [str(truncated)])
    assert report["used"] == 19 and "4-183992-A-0" not in manifest_entries(out)
    assert f"skipping {truncated}" in caplog.text
