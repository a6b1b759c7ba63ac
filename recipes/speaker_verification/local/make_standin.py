"""Build a small STAND-IN for VoxCeleb1 in the official layout, from real LibriSpeech / VCTK speech.

    python local/make_standin.py --out /tmp/vox1_standin [--seed 1]

No VoxCeleb audio exists here. This writes ``wav/id1XXXX/<video>/NNNNN.wav`` (16 kHz mono 16-bit
WAV), ``vox1_meta.csv`` (the official tab-separated columns) and ``veri_test2.txt`` (target and
non-target trials over the test speakers' utterances, the official line format):

- test speakers (Set ``test``, ids from id10270 like the real Vox1-O speakers): the LibriSpeech
  test-other speakers, one "video" per chapter;
- dev speakers (from id10001): ``--n_train_speakers`` seeded LibriSpeech train-clean-100
  speakers (one ~12 s utterance each, used whole) and the VCTK speakers (their utterances spread
  over two "videos").

It also holds what a partial download has (:func:`damage`): one file of the trial list absent, one
corrupt file (a dev utterance stored as a truncated FLAC) and one test utterance stored as
``.flac`` where the trial list says ``.wav``. Video ids are seeded
YouTube-like strings. Deterministic for a seed.
"""

from __future__ import annotations

import argparse
import random
import string
from dataclasses import dataclass
from pathlib import Path

import soundfile

from kd_modules.dataio import read_audio

SHARED_DATA = Path(__file__).resolve().parents[4] / "shared" / "data"
RATE = 16000
META_HEADER = ("VoxCeleb1 ID", "VGGFace1 ID", "Gender", "Nationality", "Set")
TRIALS_PER_ENROL = 2  # target and as many non-target trials per enrolment utterance
YOUTUBE_CHARS = string.ascii_letters + string.digits + "-_"
MISSING_SPEAKER, AS_FLAC_SPEAKER = "id10271", "id10272"  # test speakers
CORRUPT_SPEAKER = "id10001"  # a VCTK dev speaker


@dataclass
class Speaker:
    """One stand-in speaker: its vox1_meta.csv row and the real files that become its videos."""

    vox_id: str
    name: str  # the VGGFace1 ID column: the source corpus and speaker
    gender: str  # "m" / "f", as the release writes it
    split: str  # "dev" / "test"
    videos: dict[str, list[Path]]  # video id -> source files, in utterance order


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--librispeech", type=Path, default=SHARED_DATA / "librispeech_subset")
    parser.add_argument("--vctk", type=Path, default=SHARED_DATA / "vctk_subset" / "wavs")
    parser.add_argument("--n_train_speakers", type=int, default=20, help="train-clean-100 ones")
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args(argv)


def video_id(rng: random.Random) -> str:
    """An 11-character YouTube-like id."""
    return "".join(rng.choice(YOUTUBE_CHARS) for _ in range(11))


def librispeech_genders(root: Path) -> dict[str, str]:
    """Reader id -> "m" / "f" from SPEAKERS.TXT (``ID | SEX | SUBSET | MINUTES | NAME``)."""
    genders = {}
    for line in (root / "SPEAKERS.TXT").read_text().splitlines():
        fields = [f.strip() for f in line.split("|")]
        if not line.startswith(";") and len(fields) >= 2:
            genders[fields[0]] = fields[1].lower()
    return genders


def librispeech_speakers(root: Path, subset: str, speakers: list[str], rng) -> list[Speaker]:
    """One Speaker per LibriSpeech reader; each chapter becomes a video."""
    genders = librispeech_genders(root)
    found = []
    for spk in speakers:
        videos = {
            video_id(rng): sorted(chapter.glob("*.flac"))
            for chapter in sorted((root / subset / spk).iterdir())
        }
        found.append(Speaker("", f"LibriSpeech_{spk}", genders.get(spk, "m"), "", videos))
    return found


def vctk_speakers(root: Path, rng) -> list[Speaker]:
    """One Speaker per VCTK folder, its utterances spread over two videos (p225 f, p226 m)."""
    genders = {"p225": "f", "p226": "m"}
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(folder.glob("*.flac"))
        half = (len(files) + 1) // 2
        videos = {video_id(rng): files[:half], video_id(rng): files[half:]}
        found.append(Speaker("", f"VCTK_{folder.name}", genders.get(folder.name, "m"), "", videos))
    return found


def choose_speakers(args: argparse.Namespace, rng: random.Random) -> list[Speaker]:
    """Test speakers (test-other) from id10270; dev ones (VCTK, train-clean-100) from id10001."""
    root = args.librispeech / "LibriSpeech"
    readers = sorted(p.name for p in (root / "train-clean-100").iterdir() if p.is_dir())
    train_readers = sorted(rng.sample(readers, min(args.n_train_speakers, len(readers))), key=int)
    test_readers = sorted((p.name for p in (root / "test-other").iterdir()), key=int)
    dev = vctk_speakers(args.vctk, rng) + librispeech_speakers(
        root, "train-clean-100", train_readers, rng
    )
    test = librispeech_speakers(root, "test-other", test_readers, rng)
    for number, speaker in enumerate(dev, start=10001):
        speaker.vox_id, speaker.split = f"id{number}", "dev"
    for number, speaker in enumerate(test, start=10270):
        speaker.vox_id, speaker.split = f"id{number}", "test"
    return dev + test


def utterances(speaker: Speaker) -> list[tuple[str, Path]]:
    """(path under wav/ as the trial list writes it, source file) of each utterance."""
    return [
        (f"{speaker.vox_id}/{video}/{index:05d}.wav", source)
        for video, sources in speaker.videos.items()
        for index, source in enumerate(sources, start=1)
    ]


def write_audio(wav_dir: Path, rel: str, source: Path, kind: str = "wav") -> None:
    """The source as 16 kHz mono 16-bit audio at ``wav_dir/rel``; ``kind`` "flac" stores it as
    FLAC (same stem), "truncated" as a FLAC cut to half its bytes (a damaged download)."""
    path = wav_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    audio = read_audio(source, RATE).numpy()
    if kind == "wav":
        soundfile.write(str(path), audio, RATE, subtype="PCM_16")
        return
    flac = path.with_suffix(".flac")
    soundfile.write(str(flac), audio, RATE, subtype="PCM_16")
    if kind == "truncated":
        flac.write_bytes(flac.read_bytes()[: flac.stat().st_size // 2])


def make_trials(test: list[Speaker], rng: random.Random) -> list[str]:
    """``TRIALS_PER_ENROL`` target and as many non-target trials per test utterance."""
    utts = {speaker.vox_id: [rel for rel, _ in utterances(speaker)] for speaker in test}
    lines = []
    for speaker, rels in utts.items():
        others = [rel for spk, group in utts.items() if spk != speaker for rel in group]
        for enrol in rels:
            same = rng.sample([r for r in rels if r != enrol], TRIALS_PER_ENROL)
            lines += [f"1 {enrol} {r}" for r in same]
            lines += [f"0 {enrol} {r}" for r in rng.sample(others, TRIALS_PER_ENROL)]
    return lines


def write_meta(path: Path, speakers: list[Speaker]) -> None:
    rows = [META_HEADER] + [(s.vox_id, s.name, s.gender, "unknown", s.split) for s in speakers]
    path.write_text("".join("\t".join(row) + "\n" for row in rows))


def damage(speakers: list[Speaker]) -> dict[str, str]:
    """What a partial download does to the tree, by path under wav/: the third utterance of
    ``MISSING_SPEAKER`` is "missing", the first of ``CORRUPT_SPEAKER`` "truncated", the first of
    ``AS_FLAC_SPEAKER`` "flac"."""
    first = {s.vox_id: [rel for rel, _ in utterances(s)] for s in speakers}
    return {
        first[MISSING_SPEAKER][2]: "missing",
        first[CORRUPT_SPEAKER][0]: "truncated",
        first[AS_FLAC_SPEAKER][0]: "flac",
    }


def main(argv: list[str] | None = None) -> Path:
    """Write the stand-in tree; return ``--out``."""
    args = parse_args(argv)
    for source in (args.librispeech / "LibriSpeech", args.vctk):
        if not source.is_dir():
            raise SystemExit(
                f"no {source}: give the stand-in's sources, make_standin.py --librispeech DIR "
                "(holding LibriSpeech/train-clean-100 and test-other) --vctk DIR (speaker folders "
                "of .flac), or run.sh --standin_librispeech DIR --standin_vctk DIR"
            )
    rng = random.Random(args.seed)
    speakers = choose_speakers(args, rng)
    damaged = damage(speakers)
    for speaker in speakers:
        for rel, source in utterances(speaker):
            if damaged.get(rel) != "missing":
                write_audio(args.out / "wav", rel, source, damaged.get(rel, "wav"))
    write_meta(args.out / "vox1_meta.csv", speakers)
    test = [s for s in speakers if s.split == "test"]
    (args.out / "veri_test2.txt").write_text("\n".join(make_trials(test, rng)) + "\n")
    print(
        f"wrote a VoxCeleb1-layout STAND-IN to {args.out}: LibriSpeech / VCTK speech, NOT VoxCeleb"
    )
    return args.out


if __name__ == "__main__":
    main()
