"""The SONYC-UST taxonomy (``dcase-ust-taxonomy.yaml``) as the recipe's output columns.

The file maps each coarse number to a name (``coarse``) and, per coarse number, each fine number
(1, 2, ... or ``X``, the incomplete "other/unknown" tag) to a name (``fine``). Column names follow
the release: ``<c>-<f>_<fine name>`` and ``<c>_<coarse name>``, with ``_presence`` appended in
``annotations.csv``; the submission CSV uses them without the suffix. Fine columns are ordered by
coarse number, then fine number, the X tag last (as in the organisers' baseline).
"""

from __future__ import annotations

from pathlib import Path

import yaml

SHIPPED = Path(__file__).with_name("dcase-ust-taxonomy.yaml")  # MIT, LICENSE-taxonomy.md


def _fine_order(key) -> tuple[int, int]:
    return (1, 0) if str(key) == "X" else (0, int(key))


def read_layout(path: str | Path = SHIPPED) -> dict:
    """``{"fine": [...], "coarse": [...], "fine_taxonomy": [...]}`` from a taxonomy file.

    ``fine_taxonomy`` has one entry per coarse class (in ``coarse`` order): the indices into
    ``fine`` of its complete tags and of its X tag (None when it has none).
    """
    taxonomy = yaml.safe_load(Path(path).read_text())
    fine, coarse, fine_taxonomy = [], [], []
    for c in sorted(taxonomy["coarse"], key=int):
        coarse.append(f"{c}_{taxonomy['coarse'][c]}")
        entry = {"complete": [], "incomplete": None}
        for f in sorted(taxonomy["fine"][c], key=_fine_order):
            if str(f) == "X":
                entry["incomplete"] = len(fine)
            else:
                entry["complete"].append(len(fine))
            fine.append(f"{c}-{f}_{taxonomy['fine'][c][f]}")
        fine_taxonomy.append(entry)
    return {"fine": fine, "coarse": coarse, "fine_taxonomy": fine_taxonomy}


def release_taxonomy(data_root: Path) -> Path:
    """The release's own taxonomy file when it has one, else the copy shipped with the recipe."""
    own = Path(data_root) / SHIPPED.name
    return own if own.is_file() else SHIPPED
