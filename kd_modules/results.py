"""results.json (one schema for every recipe) and stage 8, the report.

Every run writes ``results.json`` in its experiment folder; ``collect`` finds them all, refusing
runs trained on other data than the prepared data now, and stage 8 writes RESULTS.md (the
tables: ``kd_modules.tables``) and each run's curves (``kd_modules.curves``).
Run as ``python -m kd_modules.results EXP_DIR --out RESULTS.md [--readme README.md]``; with
``--matrix EXP_DIR [EXP_DIR ...] --out RESULTS_MATRIX.md`` it writes the method × task matrix
(``kd_modules.matrix``) of every run under the folders instead, with its CSV and heat map.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from kd_modules.curves import plot_history
from kd_modules.dataio import write_json_atomic
from kd_modules.matrix import write_matrix
from kd_modules.outputs import OUTPUT_RECORD, output_checksums
from kd_modules.provenance import data_record
from kd_modules.tables import results_table

REQUIRED_FIELDS = (
    "task",
    "dataset",
    "role",
    "method",
    "arch",
    "seed",
    "fold",
    "metrics",
    "params",
    "macs",
    "latency_ms",
    "checkpoint",
    "selection",
    "teacher_fingerprint",
    "versions",
    "git_commit",
    "wall_time_s",
)
README_START = "<!-- results:start -->"
README_END = "<!-- results:end -->"


def write_results(path: str | Path, results: dict) -> None:
    """Validate the schema (every required field present) and write ``results.json``, with the
    SHA-256 of each output file it names (``kd_modules.outputs``): stage 7 evaluates a run again
    when one of them is gone or changed."""
    missing = [name for name in REQUIRED_FIELDS if name not in results]
    if missing:
        raise ValueError(f"results.json is missing fields {missing}")
    checksums = output_checksums(results, Path(path).parent)
    write_json_atomic(path, {**results, OUTPUT_RECORD: checksums})


def collect(exp_dir: str | Path) -> list[dict]:
    """Every ``results.json`` under ``exp_dir`` with its folder recorded as ``run_dir``."""
    runs = []
    for path in sorted(Path(exp_dir).rglob("results.json")):
        run = json.loads(path.read_text())
        run["run_dir"] = str(path.parent)
        runs.append(run)
    return runs


def stale_data_runs(runs: list[dict]) -> list[str]:
    """Runs whose recorded data (manifest hashes, prepare settings) differ from the files now.

    Each results.json names its data files (``data_files``: split -> manifest, and
    ``prepare_settings``); a folder trained on a demo subset must not be reported as the full
    dataset's result after stage 1 re-prepared the data.
    """
    stale = []
    for run in runs:
        files = run.get("data_files")
        if not files or run.get("data") is None:
            continue
        manifests = files["manifests"]
        if not all(Path(path).is_file() for path in manifests.values()):
            stale.append(f"{run['run_dir']} (its manifests are gone)")
        elif data_record(manifests, files["prepare_settings"]) != run["data"]:
            stale.append(run["run_dir"])
    return stale


def update_readme(readme: str | Path, table: str) -> None:
    """Replace the text between the results markers of ``readme`` with ``table``."""
    readme = Path(readme)
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme} has no {README_START} ... {README_END} markers")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_START}\n{table}{README_END}{tail}")


def collect_reportable(exp_dirs: list[str]) -> list[dict]:
    """Every run under ``exp_dirs`` (once, when folders overlap); stops with one line when there
    is none, or when some were trained on other data than the prepared data now."""
    found = {Path(run["run_dir"]).resolve(): run for d in exp_dirs for run in collect(d)}
    runs = list(found.values())
    if not runs:
        raise SystemExit(
            f"No results.json under {' '.join(exp_dirs)}: run the evaluation stage first"
        )
    stale = stale_data_runs(runs)
    if stale:
        raise SystemExit(
            f"Refusing to report {len(stale)} run(s) trained on other data than the prepared data "
            f"now: {', '.join(stale)}. Report another --exp_dir, or delete these folders and rerun."
        )
    return runs


def report(args: argparse.Namespace, sections: Callable[[list[dict]], str] | None) -> None:
    """RESULTS.md (+ README table) and each run's curves, for one experiment folder."""
    (exp_dir,) = args.exp_dir
    runs = collect_reportable(args.exp_dir)
    top = Path(Path(exp_dir).resolve().name)  # run titles start at exp_dir's own name
    for run in runs:
        history = Path(run["run_dir"]) / "history.json"
        if history.is_file():
            title = str(top / history.parent.relative_to(exp_dir))
            plot_history(history, history.parent / "curves.png", title)
    table = results_table(runs) + (sections(runs) if sections is not None else "")
    Path(args.out).write_text(f"# {args.title}\n\n{table}")
    if args.readme:
        update_readme(args.readme, table)
    print(table)


def main(
    argv: list[str] | None = None, sections: Callable[[list[dict]], str] | None = None
) -> None:
    """Stage 8: collect results, write RESULTS.md (+ README table) and each run's curves; with
    ``--matrix``, the method × task matrix of every folder given (Markdown, CSV, PNG).

    ``sections(runs)`` is a recipe's own Markdown after the results table, in RESULTS.md and the
    README alike (the sound recipe's data-free table: ``recipes/sound_classification/local/
    report.py``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "exp_dir", nargs="+", help="folder(s) searched recursively for results.json"
    )
    parser.add_argument(
        "--out", required=True, help="Markdown file to write (RESULTS.md, RESULTS_MATRIX.md)"
    )
    parser.add_argument("--readme", help="README whose results markers get the table")
    parser.add_argument("--title", default=None)
    parser.add_argument(
        "--matrix",
        action="store_true",
        help="write the method x task matrix of every run under the folders (and the .csv and "
        ".png of --out's stem) instead of RESULTS.md",
    )
    args = parser.parse_args(argv)
    if args.matrix:
        runs = collect_reportable(args.exp_dir)
        matrix = write_matrix(runs, args.out, args.title or "KD methods x tasks")
        summary = f"{len(matrix.methods)} methods x {len(matrix.columns)} columns -> {args.out}"
        print(summary, file=sys.stderr)  # stdout stays the recipes' results table
        return
    if len(args.exp_dir) > 1:
        parser.error("one exp_dir without --matrix (RESULTS.md reports one experiment folder)")
    args.title = args.title or "Results"
    report(args, sections)


if __name__ == "__main__":
    main()
