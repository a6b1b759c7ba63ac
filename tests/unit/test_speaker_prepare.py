"""Speaker-verification stage 1 on real speech: a LibriSpeech tree in the official layout (links to
../shared/data) and the VoxCeleb1-layout stand-in built from LibriSpeech / VCTK clips.

Expectations are recomputed from the trees themselves (soundfile headers, the trial list's lines),
not taken from the prepare script.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import REPO, SHARED_DATA

from kd_modules.conversion import PrepareError
from kd_modules.dataio import read_json, resolve_audio_path
from recipes.speaker_verification.local import make_standin as standin
from recipes.speaker_verification.local import prepare

LOCAL = REPO / "recipes" / "speaker_verification" / "local"
RATE = 16000
SEGMENT_S = 3.0
N_TRAIN_SPEAKERS = 8
OVERLAP = "1688"  # a test-other speaker also linked into train-clean-100
SHORT_SPEAKER = "19"  # a made-up reader with a 2 s and a 0.3 s cut of a real utterance


def run(data_root: Path, out: Path, *extra: str, dataset: str = "librispeech") -> Path:
    prepare.main(
        [
            "--dataset",
            dataset,
            "--data_root",
            str(data_root),
            "--out_dir",
            str(out),
            "--convert",
            "none",
            *extra,
        ]
    )
    return out


def read_trials(path: Path) -> list[tuple[str, str, str]]:
    return [tuple(line.split()) for line in path.read_text().splitlines()]


def all_segments(out: Path) -> dict[str, dict]:
    return {**read_json(out / "train.json"), **read_json(out / "valid.json")}


# --- LibriSpeech ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def libri_tree(tmp_path_factory) -> Path:
    """``root/LibriSpeech``: 8 train-clean-100 readers, test-other (5 x 10 utterances), the test
    reader OVERLAP linked into train-clean-100 too, and SHORT_SPEAKER's two cuts."""
    shared = SHARED_DATA / "librispeech_subset"
    if not shared.is_dir():
        pytest.skip(f"{shared} is not available")
    source = shared / "LibriSpeech"
    root = tmp_path_factory.mktemp("libri")
    (root / "LibriSpeech" / "train-clean-100").mkdir(parents=True)
    readers = sorted(p.name for p in (source / "train-clean-100").iterdir())[:N_TRAIN_SPEAKERS]
    for reader in readers:
        (root / "LibriSpeech" / "train-clean-100" / reader).symlink_to(
            source / "train-clean-100" / reader
        )
    (root / "LibriSpeech" / "test-other").symlink_to(source / "test-other")
    (root / "LibriSpeech" / "train-clean-100" / OVERLAP).symlink_to(source / "test-other" / OVERLAP)
    audio, rate = soundfile.read(next((source / "train-clean-100").glob("*/*/*.flac")))
    chapter = root / "LibriSpeech" / "train-clean-100" / SHORT_SPEAKER / "198"
    chapter.mkdir(parents=True)
    soundfile.write(chapter / "19-198-0000.flac", audio[rate : 3 * rate], rate)
    soundfile.write(chapter / "19-198-0001.flac", audio[rate : int(1.3 * rate)], rate)
    return root


@pytest.fixture(scope="module")
def libri(libri_tree: Path, tmp_path_factory) -> Path:
    return run(libri_tree, tmp_path_factory.mktemp("libri_out"))


def test_librispeech_segments_tile_each_utterance(libri: Path):
    """Consecutive 3 s segments from sample 0; a tail of >= 1.5 s is a shorter last segment, a
    shorter one is dropped; a 2 s utterance is one whole segment; start/stop lie in the file."""
    by_utt = defaultdict(list)
    for seg_id, seg in all_segments(libri).items():
        utt, k = seg_id.rsplit("_", 1)
        by_utt[utt].append((int(k), seg))
    size = int(SEGMENT_S * RATE)
    assert len(by_utt) == N_TRAIN_SPEAKERS + 1  # one utterance per reader; the 0.3 s cut is out
    tails = []  # per utterance of 1+ full segments: was its tail kept?
    for utt, numbered in by_utt.items():
        segs = [seg for _, seg in sorted(numbered, key=lambda pair: pair[0])]
        frames = soundfile.info(segs[0]["wav"]).frames
        assert Path(segs[0]["wav"]).stem == utt.split("/")[-1]
        full, tail = divmod(frames, size)
        bounds = [(k * size, (k + 1) * size) for k in range(full)]
        bounds += [(full * size, frames)] if (2 * tail >= size or full == 0) else []
        assert [(s["start"], s["stop"]) for s in segs] == bounds
        assert all(s["duration"] == pytest.approx((s["stop"] - s["start"]) / RATE) for s in segs)
        tails += [2 * tail >= size] if full else []
    assert True in tails and False in tails  # both rules are exercised by these readers
    short = by_utt[f"{SHORT_SPEAKER}/198/19-198-0000"]
    assert [(s["start"], s["stop"]) for _, s in short] == [(0, 2 * RATE)]


def test_librispeech_speakers_are_disjoint_and_labelled(libri: Path, libri_tree: Path):
    train, valid = read_json(libri / "train.json"), read_json(libri / "valid.json")
    test, speakers = read_json(libri / "test.json"), read_json(libri / "speakers.json")
    report = read_json(libri / "prepare_report.json")
    train_speakers = {seg["spk_id"] for seg in train.values()}
    assert {seg["spk_id"] for seg in valid.values()} <= train_speakers
    assert speakers == sorted(train_speakers)
    assert all(speakers[s["spk_label"]] == s["spk_id"] for s in {**train, **valid}.values())
    test_speakers = {entry["spk_id"] for entry in test.values()}
    assert test_speakers == {p.name for p in (libri_tree / "LibriSpeech/test-other").iterdir()}
    assert not train_speakers & test_speakers
    assert report["train_speakers_in_test"] == [OVERLAP]
    assert report["too_short_ids"] == [f"{SHORT_SPEAKER}/198/19-198-0001"]
    assert report["segments"] == {"train": len(train), "valid": len(valid)}
    sides = defaultdict(list)
    for name, manifest in (("train", train), ("valid", valid)):
        sides[name] += [seg["spk_id"] for seg in manifest.values()]
    for speaker in train_speakers:  # at least one valid segment of each, never all
        total = sides["train"].count(speaker) + sides["valid"].count(speaker)
        assert sides["train"].count(speaker) >= 1
        assert sides["valid"].count(speaker) == (0 if total == 1 else max(1, round(0.1 * total)))


def test_librispeech_trials_are_balanced_seeded_and_in_test(libri, libri_tree, tmp_path):
    trials = read_trials(libri / "trials.txt")
    test = read_json(libri / "test.json")
    labels = [label for label, _, _ in trials]
    assert labels.count("1") == labels.count("0") == 5 * 45  # every target pair, as many others
    for label, enrol, other in trials:
        assert label == str(int(test[enrol]["spk_id"] == test[other]["spk_id"]))
    assert {uid for _, *pair in trials for uid in pair} == set(test)
    assert len(set(trials)) == len(trials)
    same = run(libri_tree, tmp_path / "same")
    assert (same / "trials.txt").read_bytes() == (libri / "trials.txt").read_bytes()
    other = run(libri_tree, tmp_path / "other", "--seed", "2")
    assert read_trials(other / "trials.txt") != trials
    capped = read_trials(run(libri_tree, tmp_path / "capped", "--n_trials", "20") / "trials.txt")
    assert sorted(label for label, _, _ in capped) == ["0"] * 10 + ["1"] * 10
    assert set(read_json(tmp_path / "capped" / "test.json")) == {
        uid for _, *pair in capped for uid in pair
    }


def test_librispeech_root_may_be_the_librispeech_folder(libri_tree, libri, tmp_path):
    out = run(libri_tree / "LibriSpeech", tmp_path / "direct")
    assert (out / "trials.txt").read_text() == (libri / "trials.txt").read_text()
    assert read_json(out / "train.json") == read_json(libri / "train.json")


# --- VoxCeleb1 stand-in -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vox_tree(tmp_path_factory) -> Path:
    if not standin.SHARED_DATA.is_dir():
        pytest.skip(f"{standin.SHARED_DATA} is not available")
    return standin.main(["--out", str(tmp_path_factory.mktemp("vox1") / "standin")])


@pytest.fixture(scope="module")
def vox(vox_tree: Path, tmp_path_factory) -> Path:
    """Prepared with the default conversion (out_dir/audio/, 16 kHz WAV)."""
    out = tmp_path_factory.mktemp("vox1_out")
    prepare.main(["--dataset", "voxceleb1", "--data_root", str(vox_tree), "--out_dir", str(out)])
    return out


def test_standin_has_the_official_layout(vox_tree: Path):
    header, *rows = [
        line.split("\t") for line in (vox_tree / "vox1_meta.csv").read_text().splitlines()
    ]
    assert header == ["VoxCeleb1 ID", "VGGFace1 ID", "Gender", "Nationality", "Set"]
    assert {row[4] for row in rows} == {"dev", "test"}
    wavs = sorted((vox_tree / "wav").glob("id1*/*/*.wav"))
    assert len(wavs) > 60 and all(len(p.parent.name) == 11 for p in wavs)
    assert {soundfile.info(p).samplerate for p in wavs} == {RATE}
    test_ids = {row[0] for row in rows if row[4] == "test"}
    for label, enrol, other in read_trials(vox_tree / "veri_test2.txt"):
        assert enrol.endswith(".wav") and {enrol[:7], other[:7]} <= test_ids
        assert label == str(int(enrol[:7] == other[:7]))


def test_standin_is_seeded_and_says_it_is_a_standin(vox_tree: Path, tmp_path, capsys):
    again = standin.main(["--out", str(tmp_path / "again")])
    assert capsys.readouterr().out == (
        f"wrote a VoxCeleb1-layout STAND-IN to {again}: LibriSpeech / VCTK speech, NOT VoxCeleb\n"
    )
    for name in ("vox1_meta.csv", "veri_test2.txt"):
        assert (again / name).read_text() == (vox_tree / name).read_text()
    files = {p.relative_to(vox_tree) for p in vox_tree.rglob("*") if p.is_file()}
    assert files == {p.relative_to(again) for p in again.rglob("*") if p.is_file()}
    other = standin.main(["--out", str(tmp_path / "other"), "--seed", "2"])
    assert (other / "veri_test2.txt").read_text() != (vox_tree / "veri_test2.txt").read_text()


def test_voxceleb_excludes_trial_speakers_and_counts_damage(vox: Path, vox_tree: Path):
    listed = read_trials(vox_tree / "veri_test2.txt")
    absent = sorted(
        {r for _, *pair in listed for r in pair if not resolve_audio_path(vox_tree / "wav" / r)}
    )
    corrupt = sorted((vox_tree / "wav").glob("id10001/*/00001.flac"))
    assert len(absent) == 1 and len(corrupt) == 1
    report = read_json(vox / "prepare_report.json")
    assert (report["missing"], report["missing_files"]) == (1, absent)
    assert (report["corrupt"], report["corrupt_files"]) == (1, [str(corrupt[0])])
    kept = [t for t in listed if absent[0] not in t]
    assert report["dropped_trials"] == len(listed) - len(kept) > 0
    assert read_trials(vox / "trials.txt") == [
        (label, enrol[:-4], other[:-4]) for label, enrol, other in kept
    ]
    trial_speakers = {r[:7] for _, *pair in listed for r in pair}
    segments = all_segments(vox)
    assert not trial_speakers & {seg["spk_id"] for seg in segments.values()}
    assert not trial_speakers & set(read_json(vox / "speakers.json"))
    corrupt_id = corrupt[0].relative_to(vox_tree / "wav").with_suffix("").as_posix()
    assert not any(seg_id.startswith(corrupt_id) for seg_id in segments)
    test = read_json(vox / "test.json")
    assert set(test) == {uid for _, *pair in read_trials(vox / "trials.txt") for uid in pair}
    assert all(Path(e["wav"]).is_relative_to(vox / "audio") for e in test.values())


def test_voxceleb_reads_flac_where_the_list_says_wav(vox: Path, vox_tree: Path):
    (flac,) = sorted((vox_tree / "wav").glob(f"{standin.AS_FLAC_SPEAKER}/*/*.flac"))
    uid = str(flac.relative_to(vox_tree / "wav").with_suffix(""))
    entry = read_json(vox / "test.json")[uid]
    converted, rate = soundfile.read(entry["wav"])
    source, _ = soundfile.read(flac)
    assert rate == RATE and np.abs(converted - source).max() < 1e-3
    assert entry["duration"] == pytest.approx(len(source) / RATE, abs=1e-4)


def test_voxceleb_valid_takes_whole_utterances_of_multi_utterance_speakers(vox: Path):
    train, valid = read_json(vox / "train.json"), read_json(vox / "valid.json")
    sides = defaultdict(lambda: defaultdict(set))  # speaker -> utterance -> {train, valid}
    for name, manifest in (("train", train), ("valid", valid)):
        for seg_id, seg in manifest.items():
            sides[seg["spk_id"]][seg_id.rsplit("_", 1)[0]].add(name)
    for spk in ("id10001", "id10002"):  # the VCTK speakers: ten (nine readable) utterances
        assert len(sides[spk]) >= 9
        assert all(len(side) == 1 for side in sides[spk].values())  # whole utterances
        assert {"train"} in sides[spk].values() and {"valid"} in sides[spk].values()
    counts = defaultdict(int)
    for seg in [*train.values(), *valid.values()]:
        counts[seg["spk_id"]] += 1
    assert {s["spk_id"] for s in valid.values()} == {spk for spk, n in counts.items() if n >= 2}


def test_voxceleb_drops_dev_speakers_of_a_custom_trial_list(vox_tree: Path, tmp_path):
    """A Vox1-E-like list that uses a dev speaker: that speaker leaves the training set."""
    dev_utt = next((vox_tree / "wav").glob("id10003/*/00001.wav")).relative_to(vox_tree / "wav")
    test_utts = sorted((vox_tree / "wav").glob("id10270/*/*.wav"))[:2]
    rels = [p.relative_to(vox_tree / "wav").as_posix() for p in test_utts]
    trials = tmp_path / "list_e.txt"
    trials.write_text(f"1 {rels[0]} {rels[1]}\n0 {rels[0]} {dev_utt.as_posix()}\n")
    out = run(vox_tree, tmp_path / "out", "--trials", str(trials), dataset="voxceleb1")
    report = read_json(out / "prepare_report.json")
    assert report["dev_speakers_in_trials"] == ["id10003"]
    assert "id10003" not in read_json(out / "speakers.json")
    assert "id10003" in {e["spk_id"] for e in read_json(out / "test.json").values()}
    assert len(read_json(out / "speakers.json")) == 21  # 22 dev speakers minus id10003


# --- reruns and errors --------------------------------------------------------------------------


def test_data_info_counts_the_training_speakers(vox: Path):
    """data_info.json (what run.sh reads): the classifier's classes are the training speakers;
    the files are those a run reads."""
    info = read_json(vox / "data_info.json")
    speakers = read_json(vox / "speakers.json")
    assert (info["dataset"], info["outputs"]) == ("voxceleb1", len(speakers))
    names = {"train.json", "valid.json", "test.json", "trials.txt", "speakers.json", ".done"}
    assert set(info["files"]) == names


def test_rerun_with_the_same_arguments_is_skipped(vox: Path, vox_tree: Path, caplog):
    before = {p.name: p.stat().st_mtime_ns for p in vox.iterdir() if p.is_file()}
    caplog.set_level("INFO")
    prepare.main(["--dataset", "voxceleb1", "--data_root", str(vox_tree), "--out_dir", str(vox)])
    assert f"voxceleb1 already prepared with these arguments in {vox}: skipping" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in vox.iterdir() if p.is_file()} == before


def test_changed_arguments_prepare_again(libri_tree: Path, tmp_path, caplog):
    caplog.set_level("INFO")
    out = run(libri_tree, tmp_path / "out")
    first = (out / "trials.txt").read_text()
    run(libri_tree, out)
    assert caplog.text.count("already prepared") == 1
    run(libri_tree, out, "--seed", "2")
    assert caplog.text.count("already prepared") == 1
    assert read_json(out / ".done")["seed"] == 2 and (out / "trials.txt").read_text() != first


def test_options_of_the_other_dataset_and_absent_subsets_are_errors(libri_tree, tmp_path):
    with pytest.raises(PrepareError) as err:
        run(libri_tree, tmp_path / "out", "--n_trials", "10", dataset="voxceleb1")
    assert str(err.value) == "--n_trials: not an option for --dataset voxceleb1"
    with pytest.raises(PrepareError) as err:
        run(libri_tree, tmp_path / "out", "--train_subsets", "train-clean-360")
    absent = libri_tree / "LibriSpeech" / "train-clean-360"
    assert str(err.value) == f"no LibriSpeech subset {absent} (is --data_root right?)"


def test_errors_name_the_file(vox_tree: Path, tmp_path):
    root = tmp_path / "partial"
    root.mkdir()
    (root / "wav").symlink_to(vox_tree / "wav")
    with pytest.raises(PrepareError) as err:
        run(root, tmp_path / "out", dataset="voxceleb1")
    meta = root / "vox1_meta.csv"
    assert str(err.value) == f"no vox1_meta.csv at {meta} (is --data_root the VoxCeleb1 folder?)"
    shutil.copy(vox_tree / "vox1_meta.csv", meta)
    with pytest.raises(PrepareError) as err:
        run(root, tmp_path / "out", dataset="voxceleb1")
    listed = root / "veri_test2.txt"
    assert str(err.value) == f"no trial list {listed} (download veri_test2.txt or give --trials)"
    listed.write_text("1 id10999/aaaaaaaaaaa/00001.wav id10999/aaaaaaaaaaa/00002.wav\n")
    with pytest.raises(PrepareError) as err:
        run(root, tmp_path / "out", dataset="voxceleb1")
    assert str(err.value) == f"{listed}: no trial has readable audio on both sides"


def test_bad_trial_line_is_named_as_the_library_reads_it(vox_tree: Path, tmp_path):
    """Stage 1 reads the trial list with kd_modules.verification.read_trials, as stage 7 does: a
    label other than 0 / 1 is named as such, with the file and line."""
    root = tmp_path / "bad_label"
    root.mkdir()
    (root / "wav").symlink_to(vox_tree / "wav")
    shutil.copy(vox_tree / "vox1_meta.csv", root)
    lines = (vox_tree / "veri_test2.txt").read_text().splitlines()
    label, enrol, test = lines[1].split()
    lines[1] = f"2 {enrol} {test}"
    (root / "veri_test2.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(PrepareError) as err:
        run(root, tmp_path / "out", dataset="voxceleb1")
    assert str(err.value) == f"{root / 'veri_test2.txt'}, line 2: label must be 0 or 1, got '2'"


def test_no_training_speaker_left_is_an_error(vox_tree: Path, tmp_path):
    root = tmp_path / "all_test"
    root.mkdir()
    (root / "wav").symlink_to(vox_tree / "wav")
    shutil.copy(vox_tree / "veri_test2.txt", root)
    meta = (vox_tree / "vox1_meta.csv").read_text().replace("\tdev\n", "\ttest\n")
    (root / "vox1_meta.csv").write_text(meta)
    with pytest.raises(PrepareError) as err:
        run(root, tmp_path / "out", dataset="voxceleb1")
    assert str(err.value) == (
        f"no training speaker left: the dev speakers of {root / 'vox1_meta.csv'} minus those of "
        f"{root / 'veri_test2.txt'} give 0 utterances, 0 of them readable and >= --min_duration_s"
    )


def test_a_given_trial_list_that_does_not_exist_is_named(tmp_path):
    """Issue 16 item 11: ``--trials nope.txt`` names the path the user gave, not "give --trials"."""
    given = tmp_path / "nope.txt"
    (tmp_path / "vox1_meta.csv").write_text(
        "\t".join(standin.META_HEADER) + "\nid10001\tA_B\tm\tUK\tdev\n"
    )
    with pytest.raises(PrepareError) as err:
        run(tmp_path, tmp_path / "out", "--trials", str(given), dataset="voxceleb1")
    assert str(err.value) == f"--trials {given} does not exist"


def test_standin_without_its_sources_names_real_options(tmp_path):
    """Issue 16 item 10: from a checkout without ../shared/data the stand-in's message names the
    options that exist: make_standin.py's own and run.sh's (test_run_options checks run.sh takes
    them)."""
    absent = tmp_path / "absent"
    with pytest.raises(SystemExit) as err:
        standin.main(["--out", str(tmp_path / "out"), "--librispeech", str(absent)])
    assert str(err.value) == (
        f"no {absent / 'LibriSpeech'}: give the stand-in's sources, make_standin.py --librispeech "
        "DIR (holding LibriSpeech/train-clean-100 and test-other) --vctk DIR (speaker folders of "
        ".flac), or run.sh --standin_librispeech DIR --standin_vctk DIR"
    )
