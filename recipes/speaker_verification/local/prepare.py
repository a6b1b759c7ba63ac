"""Stage 1 of speaker verification: VoxCeleb1 or LibriSpeech -> SpeechBrain manifests and trials.

    python local/prepare.py --dataset voxceleb1 --data_root /data/VoxCeleb1 --out_dir data/voxceleb1
    python local/prepare.py --dataset librispeech --data_root /data --out_dir data/librispeech

Writes into ``--out_dir``:

- ``train.json`` / ``valid.json``: fixed training SEGMENTS, as SpeechBrain's voxceleb_prepare
  cuts them: ``{"<utt_id>_<k>": {wav, start, stop, duration, spk_id, spk_label}}``. Each
  training utterance is cut into consecutive ``--segment_s`` segments; a tail of at least half a
  segment (and at least ``--min_duration_s``) is kept as a shorter last segment, a shorter tail
  is dropped; an utterance shorter than one segment is one segment, whole. ``start`` / ``stop``
  count samples at ``--sample_rate`` (the converted file's rate; with ``--convert none`` the
  reader resamples, then cuts), ``stop`` exclusive; ``duration`` is ``(stop - start)`` in seconds.
- ``valid.json`` is carved from the training speakers, so validation speakers == training
  speakers (speaker-ID accuracy selects the checkpoint): per speaker, a seeded ``--valid_share``
  of its segments, at least 1 when it has 2 or more, never all. A speaker with several
  utterances gives WHOLE utterances to one side (no recording on both sides); a speaker with one
  utterance gives some of its segments (a recording on both sides, but no sample in both).
- ``test.json``: every utterance of the trial list, whole: ``{utt_id: {wav, duration, spk_id}}``
  where ``utt_id`` is the trial list's path without its extension (``id10270/x6uYqmx31kE/00001``).
- ``trials.txt``: ``label enrol_id test_id`` per line (veri_test2.txt's format over those ids);
  trials whose audio is missing, unreadable or too short are dropped and counted.
- ``speakers.json``: the training speaker ids in label order (the classifier's classes).
- ``prepare_report.json``: counts and ids of missing, unreadable (corrupt) and too-short files,
  dropped trials, excluded speakers, segments; ``.done``: the arguments (a rerun with the same
  ones is skipped); ``data_info.json`` (kd_modules.data_info): the number of training speakers
  as ``outputs`` (the classifier's classes, which run.sh reads), with the files above.

``voxceleb1``: ``data_root/wav/idXXXXX/<video>/NNNNN.wav`` (a ``.flac`` where a ``.wav`` is
expected is accepted), ``data_root/vox1_meta.csv`` (tab-separated: VoxCeleb1 ID, VGGFace1 ID,
Gender, Nationality, Set) and the trial list ``--trials`` (default ``data_root/veri_test2.txt``).
Training speakers are the ``dev`` speakers minus EVERY speaker of the trial list (so Vox1-E / H
lists, which use dev speakers, stay speaker-disjoint); the test set is the trial list's audio.

``librispeech``: ``LibriSpeech/<subset>/<speaker>/<chapter>/*.flac`` (``--data_root`` holds
``LibriSpeech/`` or is it). Training speakers come from ``--train_subsets`` (default
train-clean-100), test speakers from ``--test_subsets`` (default whichever of test-clean /
test-other exist); a speaker in both is dropped from training and counted. Utterance ids are
``<speaker>/<chapter>/<file stem>`` (VoxCeleb's ``speaker/video/utterance`` shape). There is no
official trial list: the script writes one, ``trials.txt`` only (ids, no paths), seeded and
balanced: every target pair (both orders count once) and as many non-target pairs, drawn at
random; ``--n_trials N`` caps the total at N (N/2 of each).

``folder``: any tree of audio files under ``--data_root`` (``.wav``/``.flac`` at any depth; other
files are skipped and counted), with no labels and no manifests, for distillation from a teacher's
outputs only. Each file is its own pseudo-identity ``spk_id`` (its id, the path without its
extension): no speaker is known, so ``spk_label`` is -1, ``speakers.json`` is empty,
``data_info.json`` says ``labelled: false`` and ``outputs: 0``; the pseudo-identities only carve
``valid.json`` (segments of the files, as a one-utterance speaker's) and make the S-norm cohort.
The test trials still come from a labelled set, ``--test_data_root``: a LibriSpeech tree (its
``--test_subsets``, trials generated as for ``librispeech``) or, with ``--trials`` (VoxCeleb1's
format), the files it lists under ``--test_data_root/wav``. A training file that is also a test
file is dropped from training and counted.

Every file is decoded in full once (kd_modules.conversion: a truncated FLAC counts as unreadable)
and, unless ``--convert none``, converted to ``out_dir/audio/<utt_id>.wav`` (mono,
``--sample_rate``, 16-bit), which the manifests then point at.
"""

from __future__ import annotations

import argparse
import logging
import random
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path, PurePosixPath

from kd_modules.conversion import (
    PrepareError,
    add_nj_option,
    check_and_convert,
    remove_stale_conversions,
    run_prepare,
)
from kd_modules.data_info import DATA_INFO, data_info
from kd_modules.dataio import (
    AUDIO_EXTENSIONS,
    audio_info,
    read_json,
    resolve_audio_path,
    write_json_atomic,
    write_text_atomic,
)
from kd_modules.verification import Trial, read_trials

logger = logging.getLogger(__name__)

DATASETS = ("voxceleb1", "librispeech", "folder")
META = "vox1_meta.csv"
META_ID, META_SET = "VoxCeleb1 ID", "Set"
TRIALS = "veri_test2.txt"
LIBRISPEECH_TRAIN = ("train-clean-100",)
LIBRISPEECH_TEST = ("test-clean", "test-other")
OUTPUTS = ("train.json", "valid.json", "test.json", "trials.txt", "speakers.json")
REPORT = "prepare_report.json"


@dataclass
class Sources:
    """What a dataset reader found: utterance dicts (``id``, ``spk_id``, ``src``, ``role``)."""

    train: list[dict]
    test: list[dict]
    missing: list[str] = field(default_factory=list)  # listed audio absent from the tree
    trials: list[Trial] | None = None  # the official list, or None: generate one
    trial_file: str = ""  # where the trials come from, for errors
    train_from: str = ""  # where the training speakers come from, for errors
    notes: dict = field(default_factory=dict)  # dataset-specific report entries


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring); dataset-specific options default to None."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--data_root", required=True, type=Path, help="the official layout")
    parser.add_argument("--out_dir", required=True, type=Path, help="e.g. data/<dataset>")
    parser.add_argument("--trials", type=Path, help=f"voxceleb1 (default: data_root/{TRIALS})")
    parser.add_argument("--test_data_root", type=Path, help="folder: the labelled test set")
    parser.add_argument("--train_subsets", nargs="+", help="librispeech (train-clean-100)")
    parser.add_argument("--test_subsets", nargs="+", help="librispeech (test-clean test-other)")
    parser.add_argument("--sample_rate", type=int, default=16000)
    parser.add_argument("--convert", default="auto", choices=("auto", "sox", "soundfile", "none"))
    add_nj_option(parser)
    parser.add_argument("--min_duration_s", type=float, default=0.5)
    parser.add_argument("--segment_s", type=float, default=3.0)
    parser.add_argument("--valid_share", type=float, default=0.1)
    parser.add_argument("--n_trials", type=int, help="librispeech: cap on generated trials")
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args(argv)


def check_options(args: argparse.Namespace) -> None:
    """Refuse options the dataset does not use (never ignore them silently) and bad values."""
    other = {
        "voxceleb1": ("train_subsets", "test_subsets", "n_trials", "test_data_root"),
        "librispeech": ("trials", "test_data_root"),
        "folder": ("train_subsets",),
    }
    given = [f"--{name}" for name in other[args.dataset] if getattr(args, name) is not None]
    if given:
        raise PrepareError(f"{' '.join(given)}: not an option for --dataset {args.dataset}")
    if args.dataset == "folder" and args.test_data_root is None:
        raise PrepareError(
            "--dataset folder needs --test_data_root (a labelled LibriSpeech tree, or a "
            "VoxCeleb1-layout folder with --trials): the trials need speakers"
        )
    if args.dataset == "folder" and args.trials is not None and args.test_subsets is not None:
        raise PrepareError("--test_subsets (LibriSpeech) and --trials (VoxCeleb1): give one")
    if not 0.0 <= args.valid_share < 1.0:
        raise PrepareError(f"--valid_share must be in [0, 1), got {args.valid_share}")
    if args.segment_s <= 0 or args.min_duration_s < 0:
        raise PrepareError("--segment_s must be positive and --min_duration_s non-negative")
    if args.n_trials is not None and args.n_trials < 2:
        raise PrepareError(f"--n_trials must be at least 2, got {args.n_trials}")
    if args.trials is not None and not args.trials.is_file():
        raise PrepareError(f"--trials {args.trials} does not exist")


def librispeech_root(data_root: Path) -> Path:
    """``data_root/LibriSpeech`` when it exists, else ``data_root`` itself."""
    nested = data_root / "LibriSpeech"
    return nested if nested.is_dir() else data_root


def librispeech_subsets(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The train and test subsets to read; a named subset that is absent is an error (for
    ``folder``, the test subsets of ``--test_data_root``; no train subsets)."""
    if args.dataset == "folder":
        root = librispeech_root(args.test_data_root)
        test = list(args.test_subsets or [s for s in LIBRISPEECH_TEST if (root / s).is_dir()])
        absent = [name for name in test if not (root / name).is_dir()]
        if not test or absent:
            raise PrepareError(
                f"--test_data_root {args.test_data_root}: no LibriSpeech test subset "
                f"{', '.join(absent or LIBRISPEECH_TEST)} in {root} (or give --trials)"
            )
        return [], test
    root = librispeech_root(args.data_root)
    train = list(args.train_subsets or LIBRISPEECH_TRAIN)
    test = list(args.test_subsets or [s for s in LIBRISPEECH_TEST if (root / s).is_dir()])
    if not test:
        raise PrepareError(f"no LibriSpeech test subset ({', '.join(LIBRISPEECH_TEST)}) in {root}")
    absent = [name for name in train + test if not (root / name).is_dir()]
    if absent:
        raise PrepareError(f"no LibriSpeech subset {root / absent[0]} (is --data_root right?)")
    return train, test


def settings_of(args: argparse.Namespace) -> dict:
    """The arguments that decide the output, as recorded in ``.done``."""
    settings = {
        "dataset": args.dataset,
        "data_root": str(args.data_root.resolve()),
        "sample_rate": args.sample_rate,
        "convert": args.convert,
        "min_duration_s": args.min_duration_s,
        "segment_s": args.segment_s,
        "valid_share": args.valid_share,
        "seed": args.seed,
    }
    if args.dataset == "folder":
        settings["test_data_root"] = str(args.test_data_root.resolve())
        if args.trials is not None:
            settings["trials"] = str(args.trials.resolve())
        else:
            settings["test_subsets"] = librispeech_subsets(args)[1]
            settings["n_trials"] = args.n_trials
    elif args.dataset == "voxceleb1":
        settings["trials"] = str(trial_path(args).resolve())
    else:
        settings["train_subsets"], settings["test_subsets"] = librispeech_subsets(args)
        settings["n_trials"] = args.n_trials
    return settings


def trial_path(args: argparse.Namespace) -> Path:
    """VoxCeleb1's trial list: ``--trials``, else ``data_root/veri_test2.txt``."""
    return args.trials if args.trials is not None else args.data_root / TRIALS


def is_done(out_dir: Path, settings: dict) -> bool:
    """True when ``.done`` records these settings and every output exists."""
    done = out_dir / ".done"
    outputs = [out_dir / name for name in (*OUTPUTS, REPORT, DATA_INFO)]
    return done.is_file() and read_json(done) == settings and all(p.is_file() for p in outputs)


def utterance_id(rel: str) -> str:
    """A trial-list path without its extension: ``id10270/x6uYqmx31kE/00001``."""
    return str(PurePosixPath(rel).with_suffix(""))


# --- VoxCeleb1 --------------------------------------------------------------------------------


def read_meta(path: Path) -> dict[str, str]:
    """``vox1_meta.csv`` as speaker id -> Set (``dev`` / ``test``)."""
    if not path.is_file():
        raise PrepareError(f"no {META} at {path} (is --data_root the VoxCeleb1 folder?)")
    lines = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]
    header = [name.strip() for name in lines[0]] if lines else []
    if META_ID not in header or META_SET not in header:
        raise PrepareError(f"{path}: expected tab-separated columns {META_ID!r} and {META_SET!r}")
    col_id, col_set = header.index(META_ID), header.index(META_SET)
    return {
        row[col_id].strip(): row[col_set].strip().lower()
        for row in lines[1:]
        if len(row) > max(col_id, col_set)
    }


def read_trial_list(path: Path) -> list[Trial]:
    """The trial list's lines ``label enrol_path test_path`` (paths relative to ``wav/``)."""
    if not path.is_file():
        raise PrepareError(f"no trial list {path} (download {TRIALS} or give --trials)")
    try:
        return read_trials(path)
    except ValueError as error:
        raise PrepareError(str(error)) from None


def speaker_files(folder: Path) -> list[Path]:
    """A speaker's ``<video>/<utterance>`` audio files, one per utterance (.wav before .flac)."""
    stems = sorted({p.with_suffix("") for p in folder.glob("*/*") if p.suffix in AUDIO_EXTENSIONS})
    return [resolve_audio_path(stem.with_suffix(".wav")) for stem in stems]


def voxceleb_sources(args: argparse.Namespace) -> Sources:
    """Dev speakers not in the trial list for training; the trial list's files for testing."""
    wav = args.data_root / "wav"
    meta = read_meta(args.data_root / META)
    path = trial_path(args)
    listed = read_trial_list(path)
    trial_speakers = {PurePosixPath(rel).parts[0] for _, *pair in listed for rel in pair}
    dev = sorted(spk for spk, split in meta.items() if split == "dev")
    files = {spk: speaker_files(wav / spk) for spk in dev if spk not in trial_speakers}
    absent = [spk for spk, found in files.items() if not found]
    train = [
        _utterance(f.relative_to(wav).as_posix(), f, "train") for fs in files.values() for f in fs
    ]
    located = {rel: resolve_audio_path(wav / rel) for _, *pair in listed for rel in pair}
    test = [_utterance(rel, src, "test") for rel, src in located.items() if src is not None]
    missing = [rel for rel, src in located.items() if src is None]
    trials = [(label, utterance_id(enrol), utterance_id(probe)) for label, enrol, probe in listed]
    excluded = sorted(trial_speakers.intersection(dev))
    logger.info(
        "VoxCeleb1: %d dev speakers, %d of them in the trial list (excluded), %d without audio; "
        "%d trial files, %d missing",
        len(dev),
        len(excluded),
        len(absent),
        len(test) + len(missing),
        len(missing),
    )
    notes = {"dev_speakers_in_trials": excluded, "dev_speakers_without_audio": absent}
    train_from = f"the dev speakers of {args.data_root / META} minus those of {path}"
    return Sources(train, test, missing, trials, str(path), train_from, notes)


def _utterance(rel: str, src: Path, role: str) -> dict:
    uid = utterance_id(rel)
    return {"id": uid, "spk_id": uid.split("/")[0], "src": src, "role": role}


# --- LibriSpeech ------------------------------------------------------------------------------


def librispeech_utterances(root: Path, subsets: list[str], role: str) -> list[dict]:
    """Every ``<subset>/<speaker>/<chapter>/<file>`` of the subsets, id ``speaker/chapter/stem``."""
    found = []
    for subset in subsets:
        for path in sorted((root / subset).glob("*/*/*")):
            if path.suffix in AUDIO_EXTENSIONS:
                found.append(_utterance(path.relative_to(root / subset).as_posix(), path, role))
    return found


def librispeech_sources(args: argparse.Namespace) -> Sources:
    """Training and test subsets' utterances, speaker-disjoint (overlap dropped from training)."""
    root = librispeech_root(args.data_root)
    train_subsets, test_subsets = librispeech_subsets(args)
    test = librispeech_utterances(root, test_subsets, "test")
    test_speakers = {u["spk_id"] for u in test}
    train = librispeech_utterances(root, train_subsets, "train")
    overlap = sorted({u["spk_id"] for u in train} & test_speakers)
    if overlap:
        logger.warning(
            "%d speakers are in both train and test: dropped from training", len(overlap)
        )
    train = [u for u in train if u["spk_id"] not in test_speakers]
    test_from = ", ".join(str(root / s) for s in test_subsets)
    train_from = ", ".join(str(root / s) for s in train_subsets)
    return Sources(
        train,
        test,
        trial_file=f"the trials generated over {test_from}",
        train_from=f"{train_from} (minus the test speakers)",
        notes={"train_speakers_in_test": overlap},
    )


# --- an unlabelled folder ---------------------------------------------------------------------


def folder_files(root: Path) -> tuple[list[Path], list[Path]]:
    """(audio files, other files) anywhere under ``root``, sorted; hidden files included."""
    if not root.is_dir():
        raise PrepareError(f"--data_root {root} is not a folder")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    audio = [p for p in files if p.suffix.lower() in AUDIO_EXTENSIONS]
    return audio, [p for p in files if p.suffix.lower() not in AUDIO_EXTENSIONS]


def folder_test(args: argparse.Namespace) -> tuple[list[dict], list[str], list[Trial] | None]:
    """(test utterances, listed files missing, trials or None: generate) of --test_data_root."""
    if args.trials is None:
        root = librispeech_root(args.test_data_root)
        test = librispeech_utterances(root, librispeech_subsets(args)[1], "test")
        return test, [], None
    wav = args.test_data_root / "wav"
    listed = read_trial_list(args.trials)
    located = {rel: resolve_audio_path(wav / rel) for _, *pair in listed for rel in pair}
    test = [_utterance(rel, src, "test") for rel, src in located.items() if src is not None]
    missing = [rel for rel, src in located.items() if src is None]
    trials = [(label, utterance_id(enrol), utterance_id(probe)) for label, enrol, probe in listed]
    return test, missing, trials


def folder_sources(args: argparse.Namespace) -> Sources:
    """Every audio file under --data_root for training, unlabelled (each file its own
    pseudo-identity); the test set and trials of --test_data_root."""
    audio, other = folder_files(args.data_root)
    test, missing, trials = folder_test(args)
    test_files = {Path(u["src"]).resolve() for u in test}
    in_test = [p for p in audio if p.resolve() in test_files]
    train = []
    for path in audio:
        if path.resolve() not in test_files:
            uid = utterance_id(path.relative_to(args.data_root).as_posix())
            train.append({"id": uid, "spk_id": uid, "src": path, "role": "train"})
    logger.info(
        "folder %s: %d audio files (%d also test files: dropped), %d other files skipped",
        args.data_root,
        len(audio),
        len(in_test),
        len(other),
    )
    notes = {
        "labelled": False,
        "not_audio": len(other),
        "not_audio_files": [p.relative_to(args.data_root).as_posix() for p in other],
        "train_files_in_test": [str(p) for p in in_test],
    }
    trial_file = (
        str(args.trials) if args.trials else f"the trials generated over {args.test_data_root}"
    )
    return Sources(
        train, test, missing, trials, trial_file, f"the audio under {args.data_root}", notes
    )


def generate_trials(tests: list[dict], n_trials: int | None, seed: int) -> list[Trial]:
    """Balanced, seeded trials over the test utterances: target pairs (all, or a random
    ``n_trials // 2``) and as many random non-target pairs; sorted by (enrol, test)."""
    ids = sorted(u["id"] for u in tests)
    speaker = {u["id"]: u["spk_id"] for u in tests}
    target = [pair for pair in combinations(ids, 2) if speaker[pair[0]] == speaker[pair[1]]]
    n_nontarget = len(ids) * (len(ids) - 1) // 2 - len(target)
    count = min(len(target), n_nontarget, n_trials // 2 if n_trials else len(target))
    rng = random.Random(seed)
    chosen_target = rng.sample(target, count)
    nontarget: set[tuple[str, str]] = set()
    while len(nontarget) < count:  # rejection sampling: never lists every pair
        enrol, test = sorted(rng.sample(ids, 2))
        if speaker[enrol] != speaker[test]:
            nontarget.add((enrol, test))
    trials = [(1, *pair) for pair in chosen_target] + [(0, *pair) for pair in nontarget]
    return sorted(trials, key=lambda trial: trial[1:])


# --- shared steps -----------------------------------------------------------------------------


def drop_short(clips: list[dict], min_duration_s: float) -> tuple[list[dict], list[dict]]:
    """(clips of at least ``min_duration_s``, shorter ones); each short one is logged."""
    short = [clip for clip in clips if clip["duration"] < min_duration_s]
    for clip in short:
        logger.warning("skipping %s: %.4f s < --min_duration_s", clip["src"], clip["duration"])
    return [clip for clip in clips if clip["duration"] >= min_duration_s], short


def keep_readable(trials: list[Trial], usable: set[str]) -> tuple[list[Trial], list[Trial]]:
    """(trials whose two utterances are usable, dropped trials)."""
    kept = [t for t in trials if t[1] in usable and t[2] in usable]
    return kept, [t for t in trials if not (t[1] in usable and t[2] in usable)]


def segment_bounds(frames: int, rate: int, segment_s: float, min_s: float) -> list[tuple]:
    """``(start, stop)`` sample bounds of consecutive ``segment_s`` segments of a file of
    ``frames`` samples; the tail is kept when it is at least half a segment and ``min_s``."""
    size = round(segment_s * rate)
    if frames < size:
        return [(0, frames)]
    bounds = [(k * size, (k + 1) * size) for k in range(frames // size)]
    tail = frames - bounds[-1][1]
    if tail > 0 and 2 * tail >= size and tail >= min_s * rate:
        bounds.append((bounds[-1][1], frames))
    return bounds


def segment(utterances: list[dict], segment_s: float, min_s: float, rate: int) -> list[dict]:
    """The training segments of every utterance, ids ``<utt_id>_<k>``; bounds in samples at
    ``rate`` (the recipe's rate, which kd_modules.dataio.read_audio reads them at)."""
    segments = []
    for utt in utterances:
        info = audio_info(utt["wav"])
        frames = round(info.num_frames * rate / info.sample_rate)
        for k, (start, stop) in enumerate(segment_bounds(frames, rate, segment_s, min_s)):
            segments.append(
                {
                    "id": f"{utt['id']}_{k}",
                    "utt": utt["id"],
                    "wav": utt["wav"],
                    "start": start,
                    "stop": stop,
                    "duration": round((stop - start) / rate, 4),
                    "spk_id": utt["spk_id"],
                }
            )
    return segments


def valid_of_speaker(utts: dict[str, list[dict]], share: float, rng: random.Random) -> list:
    """One speaker's validation segments (``utts``: utterance id -> its segments, in order):
    about ``share`` of them, at least 1 when it has 2 or more, never all; whole utterances when
    it has several, else segments of its one utterance."""
    total = sum(len(segs) for segs in utts.values())
    if total < 2 or share <= 0:
        return []
    want = min(total - 1, max(1, round(share * total)))
    if len(utts) == 1:
        (segs,) = utts.values()
        return rng.sample(segs, want)
    order = sorted(utts)
    rng.shuffle(order)
    chosen: list[str] = []
    for utt in order:
        taken = sum(len(utts[u]) for u in chosen)
        if taken + len(utts[utt]) <= want and len(chosen) < len(utts) - 1:
            chosen.append(utt)
    if not chosen:
        chosen = [min(order, key=lambda u: len(utts[u]))]
    return [seg for utt in chosen for seg in utts[utt]]


def carve_valid(segments: list[dict], share: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, valid) segments: :func:`valid_of_speaker` for each speaker, seeded."""
    by_speaker: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for seg in segments:
        by_speaker[seg["spk_id"]][seg["utt"]].append(seg)
    rng = random.Random(seed)
    valid_ids = {
        seg["id"]
        for spk in sorted(by_speaker)
        for seg in valid_of_speaker(by_speaker[spk], share, rng)
    }
    return [s for s in segments if s["id"] not in valid_ids], [
        s for s in segments if s["id"] in valid_ids
    ]


def segment_manifest(segments: list[dict], labels: dict[str, int]) -> dict[str, dict]:
    """Segment id -> its fields and ``spk_label`` (-1 where ``labels`` lacks it: unlabelled)."""
    keys = ("wav", "start", "stop", "duration", "spk_id")
    return {
        s["id"]: {**{k: s[k] for k in keys}, "spk_label": labels.get(s["spk_id"], -1)}
        for s in segments
    }


def convert(clips: list[dict], args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    """Check (and convert to ``out_dir/audio/<id>.wav``) every clip: (readable, unreadable)."""
    out_audio = args.out_dir.resolve() / "audio"
    return check_and_convert(
        clips,
        lambda clip: out_audio / f"{clip['id']}.wav",
        args.sample_rate,
        args.convert,
        args.nj,
    )


def main(argv: list[str] | None = None) -> None:
    """Prepare one dataset as the arguments say; raise PrepareError when it cannot."""
    args = parse_args(argv)
    check_options(args)
    settings = settings_of(args)
    if is_done(args.out_dir, settings):
        logger.info(
            "%s already prepared with these arguments in %s: skipping", args.dataset, args.out_dir
        )
        return
    (args.out_dir / ".done").unlink(missing_ok=True)
    stale = remove_stale_conversions(args.out_dir / "audio")
    readers = {"voxceleb1": voxceleb_sources, "librispeech": librispeech_sources}
    reader = readers.get(args.dataset, folder_sources)
    sources = reader(args)
    readable, corrupt = convert(sources.train + sources.test, args)
    usable, too_short = drop_short(readable, args.min_duration_s)
    tests = [u for u in usable if u["role"] == "test"]
    listed = sources.trials or generate_trials(tests, args.n_trials, args.seed)
    trials, dropped = keep_readable(listed, {u["id"] for u in tests})
    if not trials:
        raise PrepareError(f"{sources.trial_file}: no trial has readable audio on both sides")
    train_utts = [u for u in usable if u["role"] == "train"]
    segments = segment(train_utts, args.segment_s, args.min_duration_s, args.sample_rate)
    if not segments:
        raise PrepareError(
            f"no training speaker left: {sources.train_from} give {len(sources.train)} "
            f"utterances, {len(train_utts)} of them readable and >= --min_duration_s"
        )
    outputs = manifests(segments, tests, trials, args)
    report = {
        **settings,
        **sources.notes,
        "missing": len(sources.missing),
        "missing_files": sources.missing,
        "corrupt": len(corrupt),
        "corrupt_files": [str(c["src"]) for c in corrupt],
        "too_short": len(too_short),
        "too_short_ids": [c["id"] for c in too_short],
        "stale_temp_files_removed": len(stale),
        "kept_trials": len(trials),
        "target_trials": sum(label for label, _, _ in trials),
        "dropped_trials": len(dropped),
        "dropped_trial_lines": [" ".join(map(str, t)) for t in dropped],
        "train_speakers": len(outputs["speakers.json"]),
        "train_utterances": len({s["utt"] for s in segments}),
        "segments": {"train": len(outputs["train.json"]), "valid": len(outputs["valid.json"])},
        "test_utterances": len(outputs["test.json"]),
    }
    write_outputs(args.out_dir, outputs, trials, report, settings)


def manifests(segments, tests, trials, args) -> dict[str, dict | list]:
    """train / valid segment manifests, the test manifest (the trials' utterances only) and the
    speaker list, by output file name."""
    labelled = args.dataset != "folder"  # a folder's pseudo-identities are not classes
    speakers = sorted({s["spk_id"] for s in segments}) if labelled else []
    labels = {spk: label for label, spk in enumerate(speakers)}
    train, valid = carve_valid(segments, args.valid_share, args.seed)
    in_trials = {uid for _, enrol, test in trials for uid in (enrol, test)}
    test = {
        u["id"]: {"wav": u["wav"], "duration": u["duration"], "spk_id": u["spk_id"]}
        for u in tests
        if u["id"] in in_trials
    }
    return {
        "train.json": segment_manifest(train, labels),
        "valid.json": segment_manifest(valid, labels),
        "test.json": test,
        "speakers.json": speakers,
    }


def write_outputs(out: Path, outputs: dict, trials: list[Trial], report: dict, settings: dict):
    """Every output atomically; ``.done`` then ``data_info.json`` last: a killed run is redone."""
    for name, obj in outputs.items():
        write_json_atomic(out / name, obj)
    write_text_atomic(out / "trials.txt", "".join(f"{lab} {e} {t}\n" for lab, e, t in trials))
    write_json_atomic(out / REPORT, report)
    write_json_atomic(out / ".done", settings)
    facts = {} if report.get("labelled", True) else {"labelled": False}
    info = data_info(
        out, settings["dataset"], len(outputs["speakers.json"]), [*OUTPUTS, ".done"], **facts
    )
    write_json_atomic(out / DATA_INFO, info)
    logger.info(
        "%s: %d speakers, %d train / %d valid segments, %d test utterances, %d trials "
        "(%d dropped); %d missing, %d unreadable, %d too short -> %s",
        settings["dataset"],
        report["train_speakers"],
        *report["segments"].values(),
        report["test_utterances"],
        report["kept_trials"],
        report["dropped_trials"],
        report["missing"],
        report["corrupt"],
        report["too_short"],
        out,
    )


if __name__ == "__main__":
    run_prepare(main)
