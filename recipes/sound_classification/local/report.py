#!/usr/bin/env python3
"""Stage 8 of sound classification: the library's results table and, when any run is data-free,
FRAMI's comparison table with this recipe's rows (DATAFREE_ROWS).

    python local/report.py exp/fsdd --out exp/fsdd/RESULTS.md --title "..." [--readme README.md]

Takes the arguments of ``python -m kd_modules.results`` (which knows no dataset's method names:
the rows below are this recipe's methods) and writes the same files, the data-free tables after
the results table in RESULTS.md and in the README's results block alike.
"""

from __future__ import annotations

from kd_modules import results, tables

# The data-free comparison (FRAMI's table): (row label, role, method); students of every arch.
DATAFREE_ROWS = (
    ("teacher", "teacher", "none"),
    ("student on real data", "student", "none"),
    ("KD on real data", "student", "kd"),
    ("DeepInversion", "student", "deepinversion"),
    ("CMI", "student", "cmi"),
    ("FRAMI w/o reuse", "student", "frami_noreuse"),
    ("FRAMI", "student", "frami"),
)


def datafree_section(runs: list[dict]) -> str:
    """The data-free tables of ``runs`` in this recipe's rows ("" when no run is data-free)."""
    return tables.datafree_tables(runs, DATAFREE_ROWS)


def main(argv: list[str] | None = None) -> None:
    """Stage 8: RESULTS.md (and the README's table) with the data-free tables."""
    results.main(argv, sections=datafree_section)


if __name__ == "__main__":
    main()
