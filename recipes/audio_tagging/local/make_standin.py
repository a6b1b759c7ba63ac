"""Build a small STAND-IN for SONYC-UST v1 in the official layout, from real UrbanSound8K / ESC-50.

    python local/make_standin.py --out /tmp/sonyc_standin \
        [--us8k ../../tests/samples/urbansound8k] [--esc50 ../../tests/samples/esc50]

No SONYC-UST audio exists here. This writes ``annotations.csv`` (the release's columns, with
proximity and spatiotemporal columns the task ignores), ``dcase-ust-taxonomy.yaml`` and audio under
``train/`` and ``validate/``, built from real recordings whose own classes map to SONYC tags
(``CLASS_TAGS``; classes without a SONYC tag give clips with no positive). About a fifth of the
clips mix two real recordings of different tags, labelled with the union. Each clip has three
crowd annotators (positive ids) who miss tags, say "X" (uncertain) for a complete tag, or add a
wrong tag, so they disagree; validate clips also have a SONYC-team row (negative id) and the
verified row (``annotator_id`` 0, the truth), as do a fifth of the training clips. The tree also
holds one annotated clip whose audio is missing and one corrupt clip (garbage bytes), as a partial
or damaged download would. Clips are ``--clip_s`` long (the release's are 10 s) at ``--rate`` Hz
(so that stage 1 really resamples), cut or tiled from the sources. Deterministic for a seed.

``--n_eval N`` adds an evaluation release as later SONYC-UST versions ship one: N clips of another
split (``EVAL_SPLIT``) with verified rows, their audio under ``audio-eval/``, drawn from the
validate side's recordings (none of them is a training recording).
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile

from kd_modules.dataio import read_audio, resolve_audio_path
from recipes.audio_tagging.local.taxonomy import SHIPPED, read_layout

# Source class -> SONYC fine tag (coarse-fine numbers; None: no SONYC tag, a clip with no positive).
CLASS_TAGS = {
    "car_horn": "5-1",
    "children_playing": "7-X",
    "dog_bark": "8-1",
    "drilling": "2-1",
    "engine_idling": "1-2",
    "gun_shot": "3-1",
    "jackhammer": "2-2",
    "siren": "5-3",
    "street_music": "6-1",
    "air_conditioner": None,  # UrbanSound8K
    "dog": "8-1",
    "chainsaw": "4-1",
    "engine": "1-X",
    "laughing": "7-X",
    "crying_baby": "7-X",
    "door_wood_knock": "3-1",
    "footsteps": "3-1",
    "church_bells": None,
    "rooster": None,
    "crackling_fire": None,
    "sneezing": None,
    "clock_tick": None,  # ESC-50
}
MISSING = "99_000001.wav"
CORRUPT = "98_000001.wav"
EVAL_SPLIT, EVAL_FOLDER = "test", "audio-eval"  # a split prepare.py sends to eval.json


@dataclass
class Source:
    path: Path
    tag: str | None
    recording: str  # clips of one source recording stay on one side of train / validate


@dataclass
class Clip:
    split: str
    sensor: int
    name: str
    sources: list[Source]
    verified: bool
    rows: list[dict] = field(default_factory=list)

    @property
    def tags(self) -> set[str]:
        return {s.tag for s in self.sources if s.tag is not None}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    samples = Path(__file__).resolve().parents[3] / "tests" / "samples"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--us8k", type=Path, default=samples / "urbansound8k")
    parser.add_argument("--esc50", type=Path, default=samples / "esc50")
    parser.add_argument("--n_train", type=int, default=60)
    parser.add_argument("--n_validate", type=int, default=20)
    parser.add_argument("--n_eval", type=int, default=0, help="clips of an eval release (0: none)")
    parser.add_argument("--clip_s", type=float, default=4.0)
    parser.add_argument("--rate", type=int, default=22050)
    parser.add_argument("--mix_fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args(argv)


def read_sources(us8k: Path, esc50: Path) -> list[Source]:
    """Every present clip of a mapped class in the two official layouts."""
    sources = []
    root = us8k / "UrbanSound8K" if (us8k / "UrbanSound8K").is_dir() else us8k
    with open(root / "metadata" / "UrbanSound8K.csv", newline="") as f:
        for rec in csv.DictReader(f):
            path = resolve_audio_path(
                root / "audio" / f"fold{rec['fold']}" / rec["slice_file_name"]
            )
            if path is not None and rec["class"] in CLASS_TAGS:
                sources.append(Source(path, CLASS_TAGS[rec["class"]], f"us8k-{rec['fsID']}"))
    root = esc50 / "ESC-50-master" if (esc50 / "ESC-50-master").is_dir() else esc50
    with open(root / "meta" / "esc50.csv", newline="") as f:
        for rec in csv.DictReader(f):
            path = resolve_audio_path(root / "audio" / rec["filename"])
            if path is not None and rec["category"] in CLASS_TAGS:
                sources.append(Source(path, CLASS_TAGS[rec["category"]], f"esc-{rec['src_file']}"))
    return sources


def split_recordings(sources: list[Source], n_train: int, n_validate: int, rng) -> dict:
    """Sources per split, no recording on both sides, every tag in both where it can be."""
    by_tag: dict = {}
    for source in sources:
        by_tag.setdefault(source.tag, {}).setdefault(source.recording, []).append(source)
    split = {"train": [], "validate": []}
    share = n_validate / (n_train + n_validate)
    for tag in sorted(by_tag, key=str):
        recordings = sorted(by_tag[tag])
        rng.shuffle(recordings)
        n_val = max(1, round(share * len(recordings))) if len(recordings) > 1 else 0
        for index, recording in enumerate(recordings):
            split["validate" if index < n_val else "train"] += by_tag[tag][recording]
    return split


def make_clips(pool: list[Source], split: str, n: int, sensors: range, args, rng) -> list:
    """``n`` clips of one split: single sources round-robin over tags, some two-source mixtures."""
    by_tag: dict = {}
    for source in pool:
        by_tag.setdefault(source.tag, []).append(source)
    tags = sorted(by_tag, key=str)
    clips = []
    for index in range(n):
        first = rng.choice(by_tag[tags[index % len(tags)]])
        sources = [first]
        if rng.random() < args.mix_fraction:
            others = [s for s in pool if s.tag not in (first.tag, None)]
            sources.append(rng.choice(others))
        sensor = sensors[index % len(sensors)]
        verified = split != "train" or rng.random() < 0.2
        clips.append(Clip(split, sensor, f"{sensor:02d}_{index:06d}.wav", sources, verified))
    return clips


def annotator_tags(truth: set[str], all_tags: list[str], rng) -> set[str]:
    """One crowd annotator's fine tags: misses some, says X for some, adds a wrong one sometimes."""
    marked = set()
    for tag in truth:
        draw = rng.random()
        if draw < 0.15 and not tag.endswith("X") and f"{tag.split('-')[0]}-X" in all_tags:
            marked.add(f"{tag.split('-')[0]}-X")
        elif draw < 0.85:
            marked.add(tag)
    if rng.random() < 0.1:
        marked.add(rng.choice(all_tags))
    return marked


def annotation_row(clip: Clip, annotator: int, tags: set[str], layout: dict, rng) -> dict:
    """A row in the release's columns: ids, spatiotemporal context, presence and proximity."""
    row = {
        "split": clip.split,
        "sensor_id": clip.sensor,
        "audio_filename": clip.name,
        "annotator_id": annotator,
        "borough": 1,
        "block": 100 + clip.sensor,
        "latitude": 40.73,
        "longitude": -73.99,
        "year": 2017,
        "week": rng.randint(1, 52),
        "day": rng.randint(0, 6),
        "hour": rng.randint(0, 23),
    }
    for fine in layout["fine"]:
        present = fine.split("_")[0] in tags
        row[f"{fine}_presence"] = int(present)
        row[f"{fine}_proximity"] = rng.choice(["near", "far", "notsure"]) if present else -1
    for coarse in layout["coarse"]:
        number = coarse.split("_")[0]
        row[f"{coarse}_presence"] = int(any(t.split("-")[0] == number for t in tags))
    return row


def annotate(clip: Clip, layout: dict, rng) -> None:
    """Three crowd rows; validate and eval add a SONYC-team row; verified clips add annotator 0."""
    all_tags = [fine.split("_")[0] for fine in layout["fine"]]
    for annotator in rng.sample(range(1, 500), 3):
        clip.rows.append(
            annotation_row(clip, annotator, annotator_tags(clip.tags, all_tags, rng), layout, rng)
        )
    if clip.split != "train":
        clip.rows.append(annotation_row(clip, -rng.randint(1, 5), clip.tags, layout, rng))
    if clip.verified:
        clip.rows.append(annotation_row(clip, 0, clip.tags, layout, rng))


def write_audio(clip: Clip, folder: Path, args) -> None:
    """The clip's sources cut or tiled to ``clip_s`` at ``rate``, mixed at equal gain."""
    length = int(args.clip_s * args.rate)
    mix = np.zeros(length, dtype=np.float32)
    for source in clip.sources:
        wav = read_audio(source.path, args.rate).numpy()
        mix += np.resize(wav, length) / len(clip.sources)  # np.resize tiles a short clip
    soundfile.write(str(folder / clip.name), np.clip(mix, -1.0, 1.0), args.rate, subtype="PCM_16")


def special_clips(pool: list[Source], rng) -> list[Clip]:
    """An annotated training clip whose audio is missing, and one whose audio is corrupt."""
    return [
        Clip("train", 99, MISSING, [rng.choice(pool)], verified=False),
        Clip("train", 98, CORRUPT, [rng.choice(pool)], verified=False),
    ]


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    layout = read_layout()
    sources = read_sources(args.us8k, args.esc50)
    pools = split_recordings(sources, args.n_train, args.n_validate, rng)
    clips = make_clips(pools["train"], "train", args.n_train, range(0, 12), args, rng)
    clips += make_clips(pools["validate"], "validate", args.n_validate, range(20, 24), args, rng)
    if args.n_eval:
        clips += make_clips(pools["validate"], EVAL_SPLIT, args.n_eval, range(30, 34), args, rng)
    clips += special_clips(pools["train"], rng)
    folders = {"train": "train", "validate": "validate", EVAL_SPLIT: EVAL_FOLDER}
    for clip in clips:
        folder = args.out / folders[clip.split]
        folder.mkdir(parents=True, exist_ok=True)
        annotate(clip, layout, rng)
        if clip.name == CORRUPT:
            (folder / clip.name).write_bytes(b"RIFF\x00\x00\x00\x00garbage" * 64)
        elif clip.name != MISSING:
            write_audio(clip, folder, args)
    rows = [row for clip in clips for row in clip.rows]
    with open(args.out / "annotations.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    shutil.copy2(SHIPPED, args.out / SHIPPED.name)
    print(args.out)
    return args.out


if __name__ == "__main__":
    main()
