"""UrbanSound8K (Salamon et al. 2014): 8,732 clips of at most 4 s, 10 classes, 10 official folds.

Layout: ``UrbanSound8K/{audio/foldK/*.wav, metadata/UrbanSound8K.csv}``; the CSV columns are
slice_file_name, fsID, start, end, salience, fold, classID, class. Protocol: test = fold k,
train = the other nine (never reshuffled: slices of one Freesound recording, ``fsID``, share a
fold); ``fsID`` is the group when a validation split is carved from the training folds.
"""

from __future__ import annotations

import csv
from pathlib import Path

TITLE = "UrbanSound8K"
FOLDS = tuple(range(1, 11))
_META = Path("metadata") / "UrbanSound8K.csv"


def find_root(data_root: Path) -> Path:
    """The folder holding ``metadata/UrbanSound8K.csv``: ``data_root`` or its ``UrbanSound8K/``."""
    for root in (data_root, data_root / "UrbanSound8K"):
        if (root / _META).is_file():
            return root
    raise FileNotFoundError(f"{TITLE}: no {_META} in {data_root} or {data_root / 'UrbanSound8K'}")


def audio_dir(root: Path) -> Path:
    """Where the ``foldK/`` folders live."""
    return root / "audio"


def read_rows(root: Path) -> tuple[list[dict], list[str]]:
    """One row per CSV line, and the class names ordered by ``classID``."""
    rows, names = [], {}
    with open(root / _META, newline="", encoding="utf-8") as f:
        for rec in csv.DictReader(f):
            class_id = int(rec["classID"])
            names[class_id] = rec["class"]
            rows.append(
                {
                    "id": Path(rec["slice_file_name"]).stem,
                    "rel": f"fold{rec['fold']}/{rec['slice_file_name']}",
                    "label": rec["class"],
                    "label_id": class_id,
                    "group": rec["fsID"],
                    "seeded_group": rec["fsID"],
                    "fold": int(rec["fold"]),
                }
            )
    return rows, [names[c] for c in range(len(names))]


def role(row: dict, fold: int) -> str:
    """'test' for clips of ``fold``, else 'train'."""
    return "test" if row["fold"] == fold else "train"
