"""AudioMNIST (Becker et al.): 30,000 spoken digits, 60 speakers x 10 digits x 50 repetitions.

Layout: ``AudioMNIST/data/NN/<digit>_<NN>_<index>.wav`` and ``data/audioMNIST_meta.txt`` (JSON,
one entry per speaker). The metadata lists speakers, not files, so the rows are the official
grid: every speaker x digit x index 0-49.

Protocol: the five speaker-disjoint splits of the digit task from the original code
(soerenab/AudioMNIST ``preprocess_data.py``, ``create_splits``), 12 speakers per block:
split i trains on three blocks, validates on one and tests on one. Our fold k is their split k-1;
validation is theirs too (not carved from the training speakers).
"""

from __future__ import annotations

import json
from pathlib import Path

TITLE = "AudioMNIST"
FOLDS = (1, 2, 3, 4, 5)
_META = "audioMNIST_meta.txt"
_DIGITS = tuple(str(d) for d in range(10))
_REPETITIONS = 50
_A = (28, 56, 7, 19, 35, 1, 6, 16, 23, 34, 46, 53)
_B = (36, 57, 9, 24, 37, 2, 8, 17, 29, 39, 48, 54)
_C = (43, 58, 14, 25, 38, 3, 10, 20, 30, 40, 49, 55)
_D = (12, 47, 59, 15, 27, 41, 4, 11, 21, 31, 44, 50)
_E = (26, 52, 60, 18, 32, 42, 5, 13, 22, 33, 45, 51)
# fold -> (validation speakers, test speakers); every other speaker trains.
_SPLITS = {1: (_D, _E), 2: (_E, _A), 3: (_A, _B), 4: (_B, _C), 5: (_C, _D)}


def find_root(data_root: Path) -> Path:
    """The ``data/`` folder holding the metadata: given itself, ``AudioMNIST/`` or its parent."""
    candidates = (data_root, data_root / "data", data_root / "AudioMNIST" / "data")
    for root in candidates:
        if (root / _META).is_file():
            return root
    raise FileNotFoundError(f"{TITLE}: no {_META} in any of {', '.join(map(str, candidates))}")


def audio_dir(root: Path) -> Path:
    """Where the per-speaker ``NN/`` folders live."""
    return root


def read_rows(root: Path) -> tuple[list[dict], list[str]]:
    """One row per speaker x digit x repetition of the official release; labels '0'..'9'."""
    with open(root / _META, encoding="utf-8") as f:
        speakers = sorted(json.load(f))
    rows = [
        {
            "id": f"{digit}_{speaker}_{index}",
            "rel": f"{speaker}/{digit}_{speaker}_{index}.wav",
            "label": digit,
            "label_id": int(digit),
            "group": speaker,
            "seeded_group": speaker,
            "speaker": int(speaker),
        }
        for speaker in speakers
        for digit in _DIGITS
        for index in range(_REPETITIONS)
    ]
    return rows, list(_DIGITS)


def role(row: dict, fold: int) -> str:
    """'valid' / 'test' for the fold's validation / test speakers, else 'train'."""
    valid, test = _SPLITS[fold]
    if row["speaker"] in test:
        return "test"
    return "valid" if row["speaker"] in valid else "train"
