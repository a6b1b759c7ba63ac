"""Stage 1 of sound classification: an official dataset layout -> SpeechBrain JSON manifests.

    python local/prepare.py --dataset esc50 --data_root /data/ESC-50-master --out_dir data/esc50

Writes ``out_dir/fold<k>/{train,valid,test}.json`` ({utt_id: {wav, duration, label, label_id,
group}}), ``labels.json``, ``prepare_report.json``, ``.done`` (the arguments, so a rerun with
the same ones is skipped) and ``data_info.json`` (kd_modules.data_info: the classes, their number
as ``outputs``, the split and the folds prepared, which run.sh reads). Works on the full
release or any part of it: rows whose audio is absent are counted as missing; unreadable clips
(every clip is decoded in full once, so a truncated FLAC with a valid header counts too) and
clips shorter than ``--min_duration_s`` are skipped with a warning and counted, with their
files / ids, in ``prepare_report.json``.

``--split official`` follows each dataset's protocol (local/<dataset>.py); validation comes from
the training side only. ``--split seeded`` makes one fold ``1`` by a seeded group-disjoint
stratified split of the clips present, for partial copies. Unless ``--convert none``, each clip
is converted once to ``out_dir/audio/`` (mono, ``--sample_rate``, 16-bit WAV) and the manifests
point there; otherwise they point at the original files and read_audio resamples at load time.
Temporary files that a killed run's conversion left in ``out_dir/audio/`` are removed (and
counted) when prepare starts.

``--min_duration_s`` (default 0.14 s) is the recipe's floor: the teacher's TDNN context (kernels
5, 3, 3 with dilations 1, 2, 3 in hparams/teacher/xvector_large.yaml) is 1 + 4 + 4 + 6 = 15
frames (the student's, 9), and the front end (25 ms windows, 10 ms hop, centred) gives
1 + floor(n / hop) frames, so 15 frames need 14 hops = 0.14 s. Shorter clips hold no complete
teacher context (below 0.03 s the TDNN's reflect padding even fails); FSDD's shortest takes
(0.1436 s) stay in.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from types import ModuleType

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
from recipes.sound_classification.local import audiomnist, esc50, fsdd, urbansound8k

logger = logging.getLogger(__name__)

# --dataset -> its reader (TITLE, FOLDS, find_root, read_rows, audio_dir and its protocol)
READERS = {"esc50": esc50, "urbansound8k": urbansound8k, "audiomnist": audiomnist, "fsdd": fsdd}
DATASETS = tuple(READERS)
ROLES = ("train", "valid", "test")
MIN_DURATION_S = 0.14  # the teacher's 15-frame TDNN context at a 10 ms hop (see above)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--data_root", required=True, type=Path, help="the official layout")
    parser.add_argument("--out_dir", required=True, type=Path, help="e.g. data/<dataset>")
    parser.add_argument("--split", default="official", choices=("official", "seeded"))
    parser.add_argument("--folds", type=int, nargs="+", help="official folds (default: all)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--valid_fraction", type=float, default=0.1)
    parser.add_argument("--test_fraction", type=float, default=0.2, help="seeded split only")
    parser.add_argument("--sample_rate", type=int, default=16000)
    parser.add_argument("--convert", default="auto", choices=("auto", "sox", "soundfile", "none"))
    add_nj_option(parser)
    parser.add_argument(
        "--min_duration_s",
        type=float,
        default=MIN_DURATION_S,
        help="skip (and count) shorter clips (default: %(default)s, the teacher's TDNN context)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Prepare one dataset as the arguments say; raise PrepareError when it cannot."""
    args = parse_args(argv)
    dataset = READERS[args.dataset]
    folds = _folds(args, dataset)
    settings = _settings(args, folds)
    if _is_done(args.out_dir, settings, folds):
        logger.info(
            "%s already prepared with these arguments in %s: skipping", dataset.TITLE, args.out_dir
        )
        return
    try:
        root = dataset.find_root(args.data_root)
    except FileNotFoundError as err:
        raise PrepareError(str(err)) from err
    (args.out_dir / ".done").unlink(missing_ok=True)
    stale = remove_stale_conversions(args.out_dir / "audio")
    rows, labels = dataset.read_rows(root)
    _check_labels(rows, labels, dataset.TITLE)
    present = _locate(rows, dataset.audio_dir(root), dataset.TITLE)
    if args.split == "official":
        for fold in folds:
            _check_protocol(dataset, rows, present, fold)
    readable, corrupt = _check_and_convert(present, args)
    usable, too_short = _drop_short(readable, args.min_duration_s)
    manifests = {}
    for fold in folds:
        if args.split == "official":
            _check_protocol(dataset, rows, usable, fold)
            manifests[fold] = _official_split(dataset, rows, usable, fold, args)
        else:
            manifests[fold] = _seeded_split(usable, args)
    report = _report(settings, rows, present, corrupt, too_short, len(stale))
    _write_outputs(args, dataset, labels, manifests, report, settings)


def _report(settings, rows, present, corrupt, too_short, stale: int) -> dict:
    """What prepare_report.json records besides the splits: every skipped clip, by cause."""
    used = len(present) - len(corrupt) - len(too_short)
    return {
        **settings,
        "rows": len(rows),
        "present": len(present),
        "missing": len(rows) - len(present),
        "corrupt": len(corrupt),
        "corrupt_files": [str(r["src"]) for r in corrupt],
        "too_short": len(too_short),
        "too_short_ids": [r["id"] for r in too_short],
        "used": used,
        "stale_temp_files_removed": stale,
    }


def _folds(args: argparse.Namespace, dataset: ModuleType) -> list[int]:
    if args.split == "seeded":
        if args.folds not in (None, [1]):
            raise PrepareError("--split seeded makes one fold, 1: drop --folds")
        return [1]
    folds = sorted(set(args.folds or dataset.FOLDS))
    unknown = [k for k in folds if k not in dataset.FOLDS]
    if unknown:
        raise PrepareError(f"{dataset.TITLE} has folds {list(dataset.FOLDS)}, not {unknown}")
    return folds


def _settings(args: argparse.Namespace, folds: list[int]) -> dict:
    """The arguments that decide the output, as recorded in ``.done``."""
    return {
        "dataset": args.dataset,
        "data_root": str(args.data_root.resolve()),
        "split": args.split,
        "folds": folds,
        "seed": args.seed,
        "valid_fraction": args.valid_fraction,
        "test_fraction": args.test_fraction,
        "sample_rate": args.sample_rate,
        "convert": args.convert,
        "min_duration_s": args.min_duration_s,
    }


def _is_done(out_dir: Path, settings: dict, folds: list[int]) -> bool:
    needed = [out_dir / "labels.json", out_dir / "prepare_report.json", out_dir / DATA_INFO]
    needed += [out_dir / f"fold{k}" / f"{role}.json" for k in folds for role in ROLES]
    done = out_dir / ".done"
    return done.is_file() and read_json(done) == settings and all(p.is_file() for p in needed)


def _check_labels(rows: list[dict], labels: list[str], title: str) -> None:
    for row in rows:
        if labels[row["label_id"]] != row["label"]:
            raise PrepareError(
                f"{title}: {row['id']} is labelled {row['label']!r} but its "
                f"label_id {row['label_id']} is {labels[row['label_id']]!r}"
            )


def _locate(rows: list[dict], audio_dir: Path, title: str) -> list[dict]:
    """Set ``row['src']`` (the file, .wav or .flac) on the rows whose audio exists; return those."""
    present = []
    for row in rows:
        row["expected"] = audio_dir / row["rel"]
        row["src"] = resolve_audio_path(row["expected"])
        if row["src"] is not None:
            present.append(row)
    logger.info(
        "%s: %d metadata rows, %d with audio, %d missing (under %s)",
        title,
        len(rows),
        len(present),
        len(rows) - len(present),
        audio_dir,
    )
    return present


def _check_protocol(
    dataset: ModuleType, rows: list[dict], available: list[dict], fold: int
) -> None:
    """Stop when the fold's test split, or its whole training side, has no audio."""
    have = {row["id"] for row in available}
    for wanted in ("test", "train"):
        members = [row for row in rows if dataset.role(row, fold) == wanted]
        if members and not any(row["id"] in have for row in members):
            where = os.path.commonpath([str(row["expected"].parent) for row in members])
            raise PrepareError(
                f"{dataset.TITLE} fold {fold}: the {wanted} split has no audio under {where} "
                f"(0 of {len(members)} rows present and readable); use --split seeded for a "
                "partial copy, or --folds to choose folds whose audio is there"
            )


def _check_and_convert(present: list[dict], args) -> tuple[list[dict], list[dict]]:
    """Check every present clip (and convert it to ``out_dir/audio/<rel>.wav``); set ``wav``
    and ``duration``. Returns (usable rows, corrupt rows)."""
    out_audio = args.out_dir.resolve() / "audio"
    return check_and_convert(
        present,
        lambda row: (out_audio / row["rel"]).with_suffix(".wav"),
        args.sample_rate,
        args.convert,
        args.nj,
    )


def _drop_short(rows: list[dict], min_duration_s: float) -> tuple[list[dict], list[dict]]:
    """Split checked rows into (kept, shorter than ``min_duration_s``); warn for each short one."""
    kept, short = [], []
    for row in rows:
        if row["duration"] < min_duration_s:
            logger.warning(
                "skipping %s: %.4f s is shorter than --min_duration_s %s",
                row["src"],
                row["duration"],
                min_duration_s,
            )
            short.append(row)
        else:
            kept.append(row)
    if short:
        logger.info("%d clips shorter than %s s skipped", len(short), min_duration_s)
    return kept, short


def _official_split(dataset, rows, usable, fold, args) -> dict[str, dict]:
    """The protocol's test (and, where it has one, validation) split; else valid is carved."""
    split = {role: [r for r in usable if dataset.role(r, fold) == role] for role in ROLES}
    if any(dataset.role(r, fold) == "valid" for r in rows):
        logger.info("%s fold %d: validation set by the protocol", dataset.TITLE, fold)
    else:
        train = split["train"]
        fractions = {"train": 1.0 - args.valid_fraction, "valid": args.valid_fraction}
        carved = stratified_group_split(
            [r["label"] for r in train],
            [r["group"] for r in train],
            fractions,
            args.seed,
            cover=("train",),
        )
        split = {
            "train": [train[i] for i in carved["train"]],
            "valid": [train[i] for i in carved["valid"]],
            "test": split["test"],
        }
    return {role: _manifest(split[role], "group") for role in ROLES}


def _seeded_split(usable: list[dict], args) -> dict[str, dict]:
    """train/valid/test by a seeded stratified split of the clips present, grouped."""
    train_fraction = 1.0 - args.valid_fraction - args.test_fraction
    if train_fraction <= 0:
        raise PrepareError("--valid_fraction + --test_fraction must be below 1")
    fractions = {"train": train_fraction, "valid": args.valid_fraction, "test": args.test_fraction}
    assigned = stratified_group_split(
        [r["label"] for r in usable],
        [r["seeded_group"] for r in usable],
        fractions,
        args.seed,
        cover=("train", "test"),
    )
    return {role: _manifest([usable[i] for i in assigned[role]], "seeded_group") for role in ROLES}


def _manifest(rows: list[dict], group_key: str) -> dict[str, dict]:
    return {
        r["id"]: {
            "wav": r["wav"],
            "duration": r["duration"],
            "label": r["label"],
            "label_id": r["label_id"],
            "group": r[group_key],
        }
        for r in rows
    }


def _write_outputs(args, dataset, labels, manifests, report: dict, settings: dict) -> None:
    out = args.out_dir
    sizes = {}
    for fold, manifest in manifests.items():
        sizes[f"fold{fold}"] = {role: len(manifest[role]) for role in ROLES}
        for role in ROLES:
            if not manifest[role]:
                logger.warning("%s fold %d: the %s split is empty", dataset.TITLE, fold, role)
            write_json_atomic(out / f"fold{fold}" / f"{role}.json", manifest[role])
        logger.info("%s fold %d: %s", dataset.TITLE, fold, sizes[f"fold{fold}"])
    write_json_atomic(out / "labels.json", labels)
    write_json_atomic(out / "prepare_report.json", {**report, "splits": sizes})
    write_json_atomic(out / ".done", settings)
    files = ["labels.json", ".done"]
    files += [f"fold{fold}/{role}.json" for fold in manifests for role in ROLES]
    classes = {"classes": labels, "split": args.split, "folds": list(manifests)}
    write_json_atomic(out / DATA_INFO, data_info(out, args.dataset, len(labels), files, **classes))
    logger.info("wrote manifests, labels.json, prepare_report.json and %s to %s", DATA_INFO, out)


if __name__ == "__main__":
    run_prepare(main)
