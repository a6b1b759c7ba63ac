"""Free Spoken Digit Dataset (Jackson et al.): spoken digits, 50 takes per speaker and digit.

Layout: ``free-spoken-digit-dataset/recordings/<digit>_<speaker>_<take>.wav``; no metadata file,
so the rows are every file there plus the full grid (digits 0-9 x takes 0-49) of each speaker
seen, which makes absent takes count as missing. Protocol (the dataset's README): takes 0-4 are
the test set, 5-49 train; one fold. Validation is carved from the training takes grouped by
``<speaker>_<digit>`` (takes of one speaker saying one digit are near-duplicates); a seeded split
groups by clip, so that every speaker and digit stays in every split.
"""

from __future__ import annotations

import re
from pathlib import Path

TITLE = "FSDD"
FOLDS = (1,)
_TAKES = 50
_TEST_TAKES = 5
_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.(wav|flac)$")


def find_root(data_root: Path) -> Path:
    """The ``recordings/`` folder: given itself, the repository folder, or its parent."""
    candidates = (
        data_root / "recordings",
        data_root / "free-spoken-digit-dataset" / "recordings",
        data_root,
    )
    for root in candidates:
        if root.is_dir() and any(_NAME.match(p.name) for p in root.iterdir()):
            return root
    tried = ", ".join(map(str, candidates))
    raise FileNotFoundError(f"{TITLE}: no <digit>_<speaker>_<take>.wav files in any of {tried}")


def audio_dir(root: Path) -> Path:
    """The recordings folder itself."""
    return root


def read_rows(root: Path) -> tuple[list[dict], list[str]]:
    """Rows for the files present and the rest of each seen speaker's grid; labels '0'..'9'."""
    matches = (_NAME.match(p.name) for p in root.iterdir())
    keys = {(int(m[1]), m[2], int(m[3])) for m in matches if m}
    speakers = {speaker for _, speaker, _ in keys}
    keys |= {(d, s, t) for s in speakers for d in range(10) for t in range(_TAKES)}
    rows = [
        {
            "id": f"{digit}_{speaker}_{take}",
            "rel": f"{digit}_{speaker}_{take}.wav",
            "label": str(digit),
            "label_id": digit,
            "group": f"{speaker}_{digit}",
            "seeded_group": f"{digit}_{speaker}_{take}",
            "take": take,
        }
        for digit, speaker, take in sorted(keys)
    ]
    return rows, [str(d) for d in range(10)]


def role(row: dict, fold: int) -> str:
    """'test' for takes 0-4, else 'train' (``fold`` is always 1)."""
    return "test" if row["take"] < _TEST_TAKES else "train"
