"""Audio-tagging stage 1 on the SONYC-UST stand-in tree (real UrbanSound8K / ESC-50 clips).

The expected targets are recomputed here from ``annotations.csv`` with the csv module alone, so
the prepare script and train.py's target rule are checked against the release's own rows.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import AUDIO_TAGGING

from kd_modules.brains import TagLayout
from kd_modules.conversion import PrepareError
from kd_modules.dataio import read_json
from recipes.audio_tagging import train
from recipes.audio_tagging.local import make_standin as standin
from recipes.audio_tagging.local import prepare

ROLES = ("train", "valid", "test", "eval")


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """The stand-in release, built from the clips in tests/samples (40 train, 12 validate, and an
    eval release of 6)."""
    out = tmp_path_factory.mktemp("sonyc") / "release"
    standin.main(
        [
            "--out",
            str(out),
            "--n_train",
            "40",
            "--n_validate",
            "12",
            "--n_eval",
            "6",
            "--clip_s",
            "1.0",
        ]
    )
    return out


@pytest.fixture(scope="module")
def prepared(tree: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    prepare.main(["--data_root", str(tree), "--out_dir", str(out)])
    return out


def csv_rows(tree: Path) -> dict[tuple[str, str], list[dict]]:
    """(split, audio_filename) -> its annotation rows, read with the csv module alone."""
    clips = defaultdict(list)
    with open(tree / "annotations.csv", newline="") as f:
        for row in csv.DictReader(f):
            clips[(row["split"], row["audio_filename"])].append(row)
    return clips


def columns(prepared: Path) -> list[str]:
    labels = read_json(prepared / "labels.json")
    return [f"{name}_presence" for name in labels["fine"] + labels["coarse"]]


def expected_targets(rows: list[dict], cols: list[str], rule: str) -> list[int]:
    verified = [r for r in rows if r["annotator_id"] == "0"]
    if verified:
        return [int(verified[0][c]) for c in cols]
    others = [r for r in rows if r["annotator_id"] != "0"]
    votes = [sum(int(r[c]) for r in others) for c in cols]
    if rule == "any":
        return [int(v >= 1) for v in votes]
    return [int(2 * v > len(others)) for v in votes]


def all_entries(prepared: Path) -> dict[str, dict]:
    return {
        utt: entry for role in ROLES for utt, entry in read_json(prepared / f"{role}.json").items()
    }


def test_missing_and_corrupt_clips_are_skipped_and_counted(tree: Path, prepared: Path):
    report = read_json(prepared / "prepare_report.json")
    assert report["missing"] == 1 and report["missing_files"] == [f"train/{standin.MISSING}"]
    assert report["corrupt"] == 1
    assert report["corrupt_files"] == [str(tree / "train" / standin.CORRUPT)]
    names = {entry["audio_filename"] for entry in all_entries(prepared).values()}
    assert standin.MISSING not in names and standin.CORRUPT not in names
    assert len(names) == 40 + 12 + 6  # every other annotated clip is there
    assert report["splits"] == {role: len(read_json(prepared / f"{role}.json")) for role in ROLES}


def test_extra_columns_are_ignored_and_listed(prepared: Path):
    ignored = read_json(prepared / "prepare_report.json")["ignored_columns"]
    assert "latitude" in ignored and "hour" in ignored
    assert "1-1_small-sounding-engine_proximity" in ignored
    assert not any(name.endswith("_presence") for name in ignored)


@pytest.mark.parametrize("rule", ["any", "majority"])
def test_training_targets_follow_verified_rows_then_the_rule(tree, prepared, rule):
    rows, cols = csv_rows(tree), columns(prepared)
    disagreeing = 0
    for role in ("train", "valid"):
        for entry in read_json(prepared / f"{role}.json").values():
            clip_rows = rows[("train", entry["audio_filename"])]
            crowd = [[r[c] for c in cols] for r in clip_rows if r["annotator_id"] != "0"]
            disagreeing += len({tuple(votes) for votes in crowd}) > 1
            got = train.clip_targets(entry, rule)
            assert got == expected_targets(clip_rows, cols, rule), entry["audio_filename"]
    assert disagreeing >= 5  # the stand-in's annotators do disagree


def test_any_and_majority_differ_on_disagreeing_annotators(prepared: Path):
    differ = [
        entry
        for entry in read_json(prepared / "train.json").values()
        if train.clip_targets(entry, "any") != train.clip_targets(entry, "majority")
    ]
    assert differ, "no clip where one annotator alone marked a tag"
    for entry in differ:
        assert entry["verified"] is None  # a verified row settles every disagreement


def test_verified_rows_win_over_the_crowd(prepared: Path):
    verified = [e for e in read_json(prepared / "train.json").values() if e["verified"]]
    assert verified
    for entry in verified:
        assert train.clip_targets(entry, "any") == entry["verified"]
        assert train.clip_targets(entry, "majority") == entry["verified"]


def test_test_ground_truth_is_the_verified_row_only(tree: Path, prepared: Path):
    rows, cols = csv_rows(tree), columns(prepared)
    test = read_json(prepared / "test.json")
    assert len(test) == 12
    for entry in test.values():
        clip_rows = rows[("validate", entry["audio_filename"])]
        assert {r["annotator_id"] for r in clip_rows} >= {"0"}
        assert any(int(r["annotator_id"]) < 0 for r in clip_rows)  # SONYC-team row ignored
        truth = [int(r[c]) for r in clip_rows if r["annotator_id"] == "0" for c in cols]
        assert train.clip_targets(entry, "any") == truth == entry["verified"]


def test_another_split_is_the_eval_release(tree: Path, prepared: Path):
    """Rows of a split other than train / validate go to eval.json, ground truth from their
    verified rows; train.py then evaluates it too (its manifests include ``eval``)."""
    rows, cols = csv_rows(tree), columns(prepared)
    expected = {name for split, name in rows if split == standin.EVAL_SPLIT}
    assert len(expected) == 6 and (tree / standin.EVAL_FOLDER).is_dir()
    manifest = read_json(prepared / "eval.json")
    assert {entry["audio_filename"] for entry in manifest.values()} == expected
    for entry in manifest.values():
        clip_rows = rows[(standin.EVAL_SPLIT, entry["audio_filename"])]
        truth = [int(r[c]) for r in clip_rows if r["annotator_id"] == "0" for c in cols]
        assert entry["verified"] == truth
        assert Path(entry["wav"]).parent == prepared.resolve() / "audio" / standin.EVAL_SPLIT
    assert read_json(prepared / "prepare_report.json")["splits"]["eval"] == 6
    hparams = {f"{role}_annotation": str(prepared / f"{role}.json") for role in ROLES}
    assert train.splits(hparams) == ROLES


def test_a_clip_with_only_x_tags(prepared: Path):
    labels = read_json(prepared / "labels.json")
    fine, coarse = labels["fine"], labels["coarse"]
    voice = labels["fine_taxonomy"][coarse.index("7_human-voice")]
    x_only = [
        entry
        for entry in all_entries(prepared).values()
        if entry["verified"]
        and entry["verified"][voice["incomplete"]]
        and not any(entry["verified"][i] for i in voice["complete"])
    ]
    assert x_only, "the stand-in should hold a verified clip tagged only 7-X"
    for entry in x_only:
        assert entry["verified"][len(fine) + coarse.index("7_human-voice")] == 1


def test_valid_is_carved_from_train_by_sensor(prepared: Path):
    sensors = {
        role: {e["sensor_id"] for e in read_json(prepared / f"{role}.json").values()}
        for role in ("train", "valid", "test")
    }
    assert sensors["valid"] and not sensors["train"] & sensors["valid"]
    assert not (sensors["train"] | sensors["valid"]) & sensors["test"]


def test_layout_and_conversion(prepared: Path):
    labels = read_json(prepared / "labels.json")
    assert len(labels["fine"]) == 29 and len(labels["coarse"]) == 8
    assert labels["fine"][3] == "1-X_engine-of-uncertain-size"
    entry = next(iter(read_json(prepared / "test.json").values()))
    assert Path(entry["wav"]).parent == prepared.resolve() / "audio" / "validate"
    import soundfile

    info = soundfile.info(entry["wav"])
    assert (info.samplerate, info.channels) == (16000, 1)  # converted from the tree's 22.05 kHz


def test_data_info_gives_the_taggers_output_count(prepared: Path):
    """data_info.json (what run.sh reads) holds TagLayout's output count, the columns and the
    files a run reads."""
    info = read_json(prepared / "data_info.json")
    layout = TagLayout.from_json(prepared / "labels.json")
    assert (info["dataset"], info["outputs"]) == ("sonyc_ust", layout.n_outputs)
    assert info["classes"] == {"fine": layout.fine, "coarse": layout.coarse}
    manifests = {f"{role}.json" for role in ROLES if (prepared / f"{role}.json").is_file()}
    assert set(info["files"]) == manifests | {"labels.json", ".done"}


def test_rerun_with_the_same_arguments_is_skipped(tree, prepared, caplog):
    before = (prepared / "train.json").stat().st_mtime_ns
    with caplog.at_level("INFO"):
        prepare.main(["--data_root", str(tree), "--out_dir", str(prepared)])
    assert "already prepared" in caplog.text
    assert (prepared / "train.json").stat().st_mtime_ns == before


def test_a_split_without_audio_is_an_error_naming_it(tree: Path, tmp_path: Path):
    copy = tmp_path / "release"
    shutil.copytree(tree, copy, ignore=shutil.ignore_patterns("validate"))
    with pytest.raises(PrepareError, match=r"the validate split has no audio under .*validate"):
        prepare.main(["--data_root", str(copy), "--out_dir", str(tmp_path / "out")])


def test_release_without_taxonomy_uses_the_shipped_copy(tree: Path, tmp_path: Path, caplog):
    copy = tmp_path / "release"
    shutil.copytree(tree, copy)
    (copy / "dcase-ust-taxonomy.yaml").unlink()
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        prepare.main(["--data_root", str(copy), "--out_dir", str(out), "--convert", "none"])
    shipped = AUDIO_TAGGING / "local" / "dcase-ust-taxonomy.yaml"
    report = read_json(out / "prepare_report.json")
    assert Path(report["taxonomy"]) == shipped
    assert json.loads((out / "labels.json").read_text())["coarse"][0] == "1_engine"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(str(copy / shipped.name) in m and str(shipped) in m for m in warnings), warnings


def annotations_only(tree: Path, folder: Path) -> Path:
    """A release folder holding copies of the stand-in's annotations.csv and taxonomy alone
    (the checks below stop stage 1 before any audio is looked at)."""
    folder.mkdir()
    for name in ("annotations.csv", "dcase-ust-taxonomy.yaml"):
        shutil.copy(tree / name, folder / name)
    return folder


def set_cell(path: Path, row: int, column: str, value: str) -> int:
    """Set one cell of a CSV (``row`` counts data rows from 0); its line number in the file."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows, header = list(reader), reader.fieldnames
    rows[row][column] = value
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, header)
        writer.writeheader()
        writer.writerows(rows)
    return row + 2  # the header is line 1


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("2-2_jackhammer_presence", "maybe", "0 or 1"),
        ("8_dog_presence", "", "0 or 1"),
        ("annotator_id", "anna", "an integer"),
        ("annotator_id", "1.5", "an integer"),
    ],
)
def test_a_cell_that_is_not_a_number_stops_naming_file_line_and_column(
    tree: Path, tmp_path: Path, column: str, value: str, expected: str
):
    """A damaged presence cell is refused, never read as absent; a damaged annotator_id is one
    line naming where it is, not a ValueError traceback."""
    release = annotations_only(tree, tmp_path / "release")
    line = set_cell(release / "annotations.csv", 7, column, value)
    with pytest.raises(PrepareError) as error:
        prepare.main(["--data_root", str(release), "--out_dir", str(tmp_path / "out")])
    message = str(error.value)
    where = f"{release / 'annotations.csv'} line {line}: column {column} is {value!r}"
    assert message.startswith(where) and expected in message and "\n" not in message


def edit_line(path: Path, old: str, new: str) -> int:
    """Replace the line ``old`` (stripped) of a text file by ``new``; its 1-based number."""
    lines = path.read_text().splitlines()
    number = [line.strip() for line in lines].index(old)
    lines[number] = lines[number].replace(old, new)
    path.write_text("\n".join(lines) + "\n")
    return number + 1


def malformed_taxonomy(tree: Path, tmp_path: Path, old: str, new: str) -> tuple[str, Path, int]:
    """Stage 1's error on a release whose taxonomy has the line ``old`` replaced by ``new``; the
    file and the line's number."""
    release = annotations_only(tree, tmp_path / "release")
    taxonomy = release / "dcase-ust-taxonomy.yaml"
    line = edit_line(taxonomy, old, new)
    with pytest.raises(PrepareError) as error:
        prepare.main(["--data_root", str(release), "--out_dir", str(tmp_path / "out")])
    assert "\n" not in str(error.value)
    return str(error.value), taxonomy, line


def test_a_taxonomy_yaml_cannot_parse_is_one_line_naming_the_line(tree: Path, tmp_path: Path):
    """A key without its colon: the parser notices on the next line; the message names both."""
    new = "2 medium-sounding-engine"
    message, taxonomy, line = malformed_taxonomy(tree, tmp_path, "2: medium-sounding-engine", new)
    assert message.startswith(f"{taxonomy} line {line + 1} "), message
    assert "not valid YAML" in message and f"line {line} ({new!r})" in message, message


def test_a_taxonomy_of_the_wrong_shape_names_the_line_and_field(tree: Path, tmp_path: Path):
    old, new = "X: engine-of-uncertain-size", "Y: engine-of-uncertain-size"
    message, taxonomy, line = malformed_taxonomy(tree, tmp_path, old, new)
    assert message.startswith(f"{taxonomy} line {line}: field fine.1.Y: "), message
    assert "integers or X" in message
