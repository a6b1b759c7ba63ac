"""ESC-50 (Piczak 2015): 2,000 five-second clips, 50 classes, 5 official folds.

Layout: ``ESC-50-master/{audio/*.wav, meta/esc50.csv}``; the CSV columns are filename, fold,
target, category, esc10, src_file, take. Protocol: test = fold k, train = the other four folds;
clips cut from one source recording (``src_file``) share a fold, and are one group when a
validation split is carved from the training folds.
"""

from __future__ import annotations

import csv
from pathlib import Path

TITLE = "ESC-50"
FOLDS = (1, 2, 3, 4, 5)
_META = Path("meta") / "esc50.csv"


def find_root(data_root: Path) -> Path:
    """The folder holding ``meta/esc50.csv``: ``data_root`` or ``data_root/ESC-50-master``."""
    for root in (data_root, data_root / "ESC-50-master"):
        if (root / _META).is_file():
            return root
    raise FileNotFoundError(f"{TITLE}: no {_META} in {data_root} or {data_root / 'ESC-50-master'}")


def audio_dir(root: Path) -> Path:
    """Where the metadata's file names live."""
    return root / "audio"


def read_rows(root: Path) -> tuple[list[dict], list[str]]:
    """One row per CSV line, and the class names ordered by ``target``."""
    rows, names = [], {}
    with open(root / _META, newline="", encoding="utf-8") as f:
        for rec in csv.DictReader(f):
            target = int(rec["target"])
            names[target] = rec["category"]
            rows.append(
                {
                    "id": Path(rec["filename"]).stem,
                    "rel": rec["filename"],
                    "label": rec["category"],
                    "label_id": target,
                    "group": rec["src_file"],
                    "seeded_group": rec["src_file"],
                    "fold": int(rec["fold"]),
                }
            )
    return rows, [names[t] for t in range(len(names))]


def role(row: dict, fold: int) -> str:
    """'test' for clips of ``fold``, else 'train'."""
    return "test" if row["fold"] == fold else "train"
