"""Stage 1 of audio tagging: the SONYC-UST release (DCASE 2019 Task 5) -> SpeechBrain manifests.

    python local/prepare.py --data_root /data/sonyc-ust --out_dir data/sonyc_ust

Reads ``annotations.csv`` (one row per clip and annotator) and the release's
``dcase-ust-taxonomy.yaml`` (the copy shipped in local/, with a warning, when the release lacks
one). Writes ``out_dir/{train,valid,test}.json`` (+ ``eval.json`` when the later eval release is
present), ``labels.json`` (the output columns: fine tags with X tags, then coarse classes, and
the fine-level taxonomy), ``prepare_report.json``, ``.done`` (the arguments: a rerun with the
same ones is skipped) and ``data_info.json`` (kd_modules.data_info: the columns as ``classes``,
the tagger's output count as ``outputs``, which run.sh reads).

- ``train`` rows are the training pool; ``valid`` is carved from it, grouped by ``sensor_id`` (no
  sensor on both sides), for checkpoint selection. ``validate`` rows are the reported test set
  (``test.json``); rows of any other split (the eval release) go to ``eval.json``.
- Each manifest entry keeps, per output column, ``verified`` (the organisers' verified row,
  ``annotator_id`` 0, or null) and ``votes`` (the fraction of the other annotators who marked
  it); train.py turns them into targets (verified when present, else ``train_targets: any`` or
  ``majority``). Test and eval clips are scored on verified rows only: one without is skipped
  and counted.
- Extra columns (proximity, later releases' spatiotemporal columns) are ignored and listed in the
  report. A presence or ``annotator_id`` cell that is not a number (``maybe``, empty) stops the
  run with one line naming the file, line and column. Rows whose audio is missing are skipped and
  counted; unreadable clips too; a split whose audio is missing altogether stops the run with an
  error naming it. Audio is converted once to ``--sample_rate`` (mono 16-bit WAV under
  ``out_dir/audio/``, SoX when available).
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
from collections import defaultdict
from pathlib import Path

from kd_modules.brains import TagLayout
from kd_modules.conversion import (
    PrepareError,
    add_nj_option,
    check_and_convert,
    remove_stale_conversions,
    run_prepare,
)
from kd_modules.data_info import DATA_INFO, data_info
from kd_modules.dataio import read_json, resolve_audio_path, write_json_atomic
from kd_modules.splits import stratified_group_split
from recipes.audio_tagging.local.taxonomy import read_layout, release_taxonomy

logger = logging.getLogger(__name__)

ID_COLUMNS = ("split", "sensor_id", "audio_filename", "annotator_id")
ROLE_OF_SPLIT = {"train": "train", "validate": "test"}  # any other split: the eval release
VERIFIED = 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_root", required=True, type=Path, help="the release's folder")
    parser.add_argument("--out_dir", required=True, type=Path, help="e.g. data/sonyc_ust")
    parser.add_argument("--valid_fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sample_rate", type=int, default=16000)
    parser.add_argument("--convert", default="auto", choices=("auto", "sox", "soundfile", "none"))
    add_nj_option(parser)
    return parser.parse_args(argv)


def settings_of(args: argparse.Namespace) -> dict:
    """The arguments that decide the output, as recorded in ``.done``."""
    return {
        "dataset": "sonyc_ust",
        "data_root": str(args.data_root.resolve()),
        "valid_fraction": args.valid_fraction,
        "seed": args.seed,
        "sample_rate": args.sample_rate,
        "convert": args.convert,
    }


def read_annotations(path: Path, layout: dict) -> tuple[list[dict], list[str]]:
    """The rows of ``annotations.csv`` (``annotator_id`` an int, each presence cell 0/1) and its
    columns the task does not use. A cell that is not a number stops the run naming the file,
    line and column: a silent 0 would turn a damaged row into wrong labels."""
    if not path.is_file():
        raise PrepareError(f"no annotations.csv in {path.parent} (is --data_root the release?)")
    presence = [f"{c}_presence" for c in layout["fine"] + layout["coarse"]]
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        missing = [c for c in (*ID_COLUMNS, *presence) if c not in columns]
        if missing:
            raise PrepareError(f"{path}: missing columns {missing[:5]} ({len(missing)} in all)")
        rows = [parse_row(row, f"{path} line {reader.line_num}", presence) for row in reader]
    return rows, [c for c in columns if c not in (*ID_COLUMNS, *presence)]


def _number(row: dict, column: str, where: str, integer: bool = False) -> float:
    """The cell ``row[column]`` as a finite number (an integer when asked), else a PrepareError
    naming the file and line (``where``) and the column."""
    value = row[column]
    try:
        number = float(value)
    except (TypeError, ValueError):  # TypeError: the row has fewer cells than the header
        number = math.nan
    if not math.isfinite(number) or (integer and not number.is_integer()):
        expected = "an integer (0 verified, < 0 SONYC team, > 0 crowd)" if integer else "0 or 1"
        raise PrepareError(f"{where}: column {column} is {value!r}, expected {expected}")
    return number


def parse_row(row: dict, where: str, presence: list[str]) -> dict:
    """One annotation row with ``annotator_id`` as an int and each presence cell as 0/1 (the
    release has 0 and 1; a positive number is present, zero or a negative one absent)."""
    parsed = dict(row)
    parsed["annotator_id"] = int(_number(row, "annotator_id", where, integer=True))
    for column in presence:
        parsed[column] = int(_number(row, column, where) > 0)
    return parsed


def group_clips(rows: list[dict], layout: dict) -> list[dict]:
    """One entry per (split, clip): its verified labels (or None) and the annotators' votes
    (rows as :func:`read_annotations` parses them)."""
    columns = [f"{c}_presence" for c in layout["fine"] + layout["coarse"]]
    grouped: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        grouped[(row["split"], row["audio_filename"])].append(row)
    clips = []
    for (split, name), members in grouped.items():
        verified = [r for r in members if r["annotator_id"] == VERIFIED]
        others = [r for r in members if r["annotator_id"] != VERIFIED]
        votes = [sum(r[c] for r in others) / len(others) for c in columns]
        clips.append(
            {
                "split": split,
                "audio_filename": name,
                "sensor_id": members[0]["sensor_id"],
                "annotators": len(others),
                "verified": [verified[-1][c] for c in columns] if verified else None,
                "votes": votes if others else None,
            }
        )
    return clips


def audio_folder(root: Path, split: str) -> Path:
    """Where a split's audio lives: ``<split>/`` or ``audio-<split>/``, and for the eval release
    (a split other than train / validate) ``audio-eval/`` too, never for train or validate."""
    eval_folder = ("audio-eval",) if split not in ROLE_OF_SPLIT else ()
    for name in (split, f"audio-{split}", *eval_folder):
        if (root / name).is_dir():
            return root / name
    return root / split


def locate(clips: list[dict], root: Path) -> tuple[list[dict], list[str]]:
    """Clips whose audio exists (``src`` set); stop when a split has no audio at all."""
    present, missing = [], []
    for split in sorted({clip["split"] for clip in clips}):
        folder = audio_folder(root, split)
        members = [clip for clip in clips if clip["split"] == split]
        found = []
        for clip in members:
            clip["src"] = resolve_audio_path(folder / clip["audio_filename"])
            (found if clip["src"] is not None else missing).append(clip)
        if not found:
            raise PrepareError(
                f"SONYC-UST: the {split} split has no audio under {folder} (0 of its "
                f"{len(members)} annotated clips present); download it or check --data_root"
            )
        logger.info("%s: %d of %d clips have audio", split, len(found), len(members))
        present += found
    return present, [f"{c['split']}/{c['audio_filename']}" for c in missing]


def convert(clips: list[dict], args) -> tuple[list[dict], list[str]]:
    """Check and convert every present clip to ``out_dir/audio/<split>/``; (usable clips with
    ``wav`` set, unreadable files)."""
    out_audio = args.out_dir.resolve() / "audio"
    remove_stale_conversions(out_audio)
    usable, corrupt = check_and_convert(
        clips,
        lambda clip: out_audio / clip["split"] / Path(clip["audio_filename"]).with_suffix(".wav"),
        args.sample_rate,
        args.convert,
        args.nj,
    )
    return usable, [str(clip["src"]) for clip in corrupt]


def carve_valid(train: list[dict], layout: dict, args) -> tuple[list[dict], list[dict]]:
    """Split the training pool into train / valid by sensor, stratified by the first coarse
    class each clip has (its training target)."""
    n_fine = len(layout["fine"])

    def first_class(clip: dict) -> str:
        labels = clip["verified"] or [int(v > 0) for v in clip["votes"]]
        coarse = [name for name, on in zip(layout["coarse"], labels[n_fine:]) if on]
        return coarse[0] if coarse else "none"

    fractions = {"train": 1.0 - args.valid_fraction, "valid": args.valid_fraction}
    carved = stratified_group_split(
        [first_class(c) for c in train],
        [c["sensor_id"] for c in train],
        fractions,
        args.seed,
        cover=("train",),
    )
    return [train[i] for i in carved["train"]], [train[i] for i in carved["valid"]]


def manifest(clips: list[dict]) -> dict[str, dict]:
    """SpeechBrain JSON manifest: id (split/file stem) -> entry."""
    keys = ("wav", "duration", "audio_filename", "sensor_id", "annotators", "verified", "votes")
    return {
        f"{c['split']}/{Path(c['audio_filename']).stem}": {k: c[k] for k in keys} for c in clips
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = settings_of(args)
    done = args.out_dir / ".done"
    if done.is_file() and read_json(done) == settings and (args.out_dir / DATA_INFO).is_file():
        logger.info("SONYC-UST already prepared with these arguments in %s: skipping", args.out_dir)
        return
    done.unlink(missing_ok=True)
    taxonomy = release_taxonomy(args.data_root)
    layout = read_layout(taxonomy)
    rows, ignored = read_annotations(args.data_root / "annotations.csv", layout)
    clips = group_clips(rows, layout)
    present, missing = locate(clips, args.data_root)
    usable, corrupt = convert(present, args)
    roles = defaultdict(list)
    unverified = []
    for clip in usable:
        role = ROLE_OF_SPLIT.get(clip["split"], "eval")
        if role != "train" and clip["verified"] is None:
            unverified.append(f"{clip['split']}/{clip['audio_filename']}")
            continue
        roles[role].append(clip)
    roles["train"], roles["valid"] = carve_valid(roles["train"], layout, args)
    sizes = {}
    for role in ("train", "valid", "test", "eval"):
        if role == "eval" and not roles[role]:
            (args.out_dir / "eval.json").unlink(missing_ok=True)
            continue
        write_json_atomic(args.out_dir / f"{role}.json", manifest(roles[role]))
        sizes[role] = len(roles[role])
    report = {
        **settings,
        "taxonomy": str(taxonomy),
        "rows": len(rows),
        "clips": len(clips),
        "missing": len(missing),
        "missing_files": missing,
        "corrupt": len(corrupt),
        "corrupt_files": corrupt,
        "unverified_test_clips": unverified,
        "ignored_columns": ignored,
        "splits": sizes,
    }
    write_json_atomic(args.out_dir / "labels.json", layout)
    write_json_atomic(args.out_dir / "prepare_report.json", report)
    write_json_atomic(done, settings)
    write_data_info(args.out_dir, layout, sizes)
    logger.info(
        "SONYC-UST: %s; %d missing, %d unreadable, %d test clips without a verified row -> %s",
        sizes,
        len(missing),
        len(corrupt),
        len(unverified),
        args.out_dir,
    )


def write_data_info(out: Path, layout: dict, sizes: dict) -> None:
    """data_info.json: the output columns and the tagger's output count (TagLayout's, the one
    the Brain checks), with the manifests written (``sizes``: role -> clips) and labels.json."""
    outputs = TagLayout(layout["fine"], layout["coarse"], layout["fine_taxonomy"]).n_outputs
    files = ["labels.json", ".done", *(f"{role}.json" for role in sizes)]
    classes = {"fine": layout["fine"], "coarse": layout["coarse"]}
    write_json_atomic(out / DATA_INFO, data_info(out, "sonyc_ust", outputs, files, classes=classes))


if __name__ == "__main__":
    run_prepare(main)
