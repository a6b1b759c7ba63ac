"""results.json (one schema for every recipe), training history, and the Markdown report.

Every run writes ``results.json`` in its experiment folder; ``collect`` finds them all and
``results_table`` prints mean ± std over seeds and folds for each (dataset, role, arch, method).
Run as ``python -m kd_modules.results EXP_DIR --out RESULTS.md [--readme README.md]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from kd_modules.dataio import write_json_atomic
from kd_modules.outputs import OUTPUT_RECORD, output_checksums
from kd_modules.provenance import data_record
from kd_modules.run_folder import RUN_RECORD

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

REQUIRED_FIELDS = (
    "task", "dataset", "role", "method", "arch", "seed", "fold", "metrics", "params", "macs",
    "latency_ms", "checkpoint", "selection", "teacher_fingerprint", "versions", "git_commit",
    "wall_time_s",
)  # fmt: skip
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


def _teacher_fingerprints(runs: list[dict]) -> dict[tuple, str]:
    """(dataset, fold) -> the reported teacher's own fingerprint."""
    return {
        (run["dataset"], run["fold"]): run["model_fingerprint"]
        for run in runs
        if run["role"] == "teacher" and run.get("model_fingerprint")
    }


def other_teacher_runs(runs: list[dict]) -> list[dict]:
    """KD students distilled from another teacher than the one the table reports."""
    teachers = _teacher_fingerprints(runs)
    return [
        run
        for run in runs
        if run["role"] != "teacher"
        and run.get("teacher_fingerprint")
        and teachers.get((run["dataset"], run["fold"]), run["teacher_fingerprint"])
        != run["teacher_fingerprint"]
    ]


def _mean_std(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    values = [v * scale for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _count(value: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.2f}{unit}"
    return f"{value:.0f}"


PERCENT_METRICS = {"accuracy", "eer", "micro_auprc", "macro_auprc", "micro_f1"}


def is_percent(name: str) -> bool:
    """A rate shown in %: a PERCENT_METRICS name, alone or after a level (``coarse_micro_f1``)."""
    return any(name == rate or name.endswith(f"_{rate}") for rate in PERCENT_METRICS)


ROLE_ORDER = {"teacher": 0, "student": 1}


def _flat(settings: dict, prefix: str = "") -> dict:
    """Nested settings on one level: ``{"weights": {"bn": 0.1}}`` -> ``{"weights.bn": 0.1}``."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def synthesis_settings(run: dict) -> dict | None:
    """The settings a data-free run's pool was synthesised with, flat: the synthesiser's (its
    steps, learning rate, loss weights...: the ``synthesizer`` of the pool's run_record.json,
    in the pool folder results.json names) and the pool's size (``samples``); None when the
    pool's record is gone."""
    record = Path(run["synthesis"]["pool"]) / RUN_RECORD
    if not record.is_file():
        return None
    synthesizer = json.loads(record.read_text())["synthesizer"]
    return _flat({**synthesizer, "samples": run["synthesis"]["samples"]})


def _show(value) -> str:
    """A setting's value as a row label shows it: text as it is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def _sortable(value) -> tuple:
    """Numbers in numeric order, then anything else by its text (None first)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, value, "")
    return (0 if value is None else 2, 0, json.dumps(value))


def synthesis_variants(runs: list[dict]) -> dict[int, tuple[tuple, str]]:
    """id(run) -> (sort key, row label suffix), e.g. ``" (steps 30)"``, for the data-free runs of
    a (dataset, arch, method) whose pools were synthesised with different settings: each set
    of settings gets its own row, named by the settings that differ (``" (settings unknown)"``
    when a pool's record is gone), so no mean ± std mixes them. Other runs are not listed."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        if run.get("synthesis"):
            groups[(run["dataset"], run["arch"], run["method"])].append(run)
    variants = {}
    for group in groups.values():
        settings = {id(run): synthesis_settings(run) for run in group}
        known = [value for value in settings.values() if value is not None]
        names = sorted({name for value in known for name in value})
        differing = [n for n in names if len({json.dumps(v.get(n)) for v in known}) > 1]
        if not differing and (not known or len(known) == len(group)):
            continue  # one set of settings (or none known at all): one row
        for run in group:
            values = settings[id(run)]
            if values is None:
                variants[id(run)] = ((1,), " (settings unknown)")
                continue
            shown = ", ".join(f"{name} {_show(values.get(name))}" for name in differing)
            key = (0, *(_sortable(values.get(name)) for name in differing))
            variants[id(run)] = (key, f" ({shown})" if shown else "")
    return variants


VARIANTS_NOTE = (
    "A data-free method whose pools were synthesised with different settings has a row per set "
    "of settings, the settings that differ in brackets: their runs are not averaged together."
)


def results_table(runs: list[dict]) -> str:
    """Markdown table: one row per (dataset, role, arch, method), metrics as mean ± std (%);
    data-free runs of one method with different synthesis settings get a row each."""
    flagged = {id(run) for run in other_teacher_runs(runs)}
    variants = synthesis_variants(runs)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    sort_keys = {}
    for run in runs:
        variant_key, variant = variants.get(id(run), ((), ""))
        method = run["method"] + variant + (" †" if id(run) in flagged else "")
        key = (run["dataset"], run["role"], run["arch"], method)
        groups[key].append(run)
        sort_keys[key] = (run["dataset"], ROLE_ORDER.get(run["role"], 9), run["arch"],
                          run["method"] != "none", run["method"], variant_key, method)  # fmt: skip
    metric_names = sorted({name for run in runs for name in run["metrics"]})
    header = ["dataset", "role", "arch", "method", "runs", *metric_names, "params", "MACs",
              "CPU ms/clip", "epoch s"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    order = sorted(groups, key=sort_keys.__getitem__)
    for key in order:
        group = groups[key]
        cells = [*key, str(len(group))]
        for name in metric_names:
            scale = 100.0 if is_percent(name) else 1.0
            cells.append(_mean_std([run["metrics"].get(name) for run in group], scale))
        cells.append(_count(group[0]["params"]))
        cells.append(_count(group[0]["macs"]))
        cells.append(_mean_std([run["latency_ms"] for run in group]))
        cells.append(_mean_std([run.get("epoch_time_s") for run in group]))
        lines.append("| " + " | ".join(cells) + " |")
    note = "Metrics in % where a rate (accuracy, EER, AUPRC, F1); mean ± std over seeds and folds."
    if variants:
        note += "\n\n" + VARIANTS_NOTE
    if flagged:
        note += (
            "\n\n† distilled from another teacher than the one reported (the teacher was "
            "retrained after these students were): retrain them (delete their folders, rerun "
            "stage 5) to compare like with like."
        )
    return "\n".join(lines) + "\n\n" + note + "\n"


# history.json stats that are no loss terms: rates get the metrics axis, counts are not drawn.
RATE_STATS = PERCENT_METRICS | {"min_dcf"}
COUNT_STATS = {"skipped_clips"}


def _draw_stat(axis: Axes, history: list[dict], name: str, colour: str) -> None:
    """One stat of history.json on ``axis``: train solid, valid dashed."""
    for stage, style in (("train", "-"), ("valid", "--")):
        entries = [e for e in history if e["stage"] == stage and e["stats"].get(name) is not None]
        if entries:
            epochs, values = [e["epoch"] for e in entries], [e["stats"][name] for e in entries]
            axis.plot(epochs, values, style, marker="o", markersize=3, color=colour,
                      label=f"{stage} {name}")  # fmt: skip


def history_figure(history: list[dict], title: str) -> Figure:
    """A run's training curves as a matplotlib ``Figure`` (built without pyplot's global state).

    ``history``: history.json's entries ``{"stage", "epoch", "stats"}``. Left axes: the loss
    terms; right axes: the metrics (rates on a fixed 0-1 scale: on a loss axis an accuracy looks
    flat). Train is solid, valid dashed, one colour per stat. ``title`` names the run.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_metric = fig.subplots(1, 2)
    names = sorted({name for entry in history for name in entry["stats"]} - COUNT_STATS)
    rates = [n for n in names if n in RATE_STATS or is_percent(n)]
    losses = [n for n in names if n not in rates]
    for axis, drawn in ((ax_loss, losses), (ax_metric, rates)):
        for colour, name in enumerate(drawn):
            _draw_stat(axis, history, name, f"C{colour}")
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        if drawn:
            axis.legend(fontsize="small")
    ax_loss.set(title="loss terms", ylabel="loss")
    ax_metric.set(title="metrics", ylabel="rate", ylim=(-0.02, 1.02))
    fig.suptitle(title)
    return fig


def plot_history(history_file: str | Path, png: str | Path, title: str | None = None) -> Figure:
    """Draw a run's history.json to ``png`` and return the ``Figure`` (see ``history_figure``).

    ``title`` names the run (stage 8 passes its folder under exp/, e.g.
    ``fsdd/fold1/student/xvector_small/kd/seed1``); by default the folder holding history_file.
    """
    history = json.loads(Path(history_file).read_text())
    fig = history_figure(history, title or str(Path(history_file).parent))
    fig.savefig(png, dpi=80)
    return fig


def _datafree_row(label: str, group: list[dict]) -> str:
    """One row of the data-free table: accuracy, and the synthesis time and size of the pools."""
    pools = [run["synthesis"] for run in group if run.get("synthesis")]
    accuracy = _mean_std([run["metrics"].get("accuracy") for run in group], 100.0)
    seconds = _mean_std([p["wall_time_s"] for p in pools], digits=0) if pools else "–"
    samples = _mean_std([p["samples"] for p in pools], digits=0) if pools else "–"
    return f"| {label} | {len(group)} | {accuracy} | {seconds} | {samples} |"


def datafree_tables(runs: list[dict], rows: Sequence[tuple[str, str, str]]) -> str:
    """A data-free comparison per dataset and student arch, when any run is data-free ("" if
    none).

    ``rows`` are the recipe's ``(row label, role, method)``, in table order (the sound recipe's
    are FRAMI's table: teacher, student on real data, KD on real data, DeepInversion, CMI,
    FRAMI without and with hidden-state reuse); a teacher row takes the teacher of every arch,
    the others the students of the table's arch, and rows without runs are left out. Accuracy
    mean ± std over seeds and folds; for data-free rows the synthesis wall time (s) and the
    number of synthetic samples of their pools (mean ± std over the pools). A data-free method
    whose pools were synthesised with different settings gets a row per set of settings, named
    by those that differ (``synthesis_variants``: "FRAMI (steps 30)", "FRAMI (steps 120)").
    """
    datafree = [run for run in runs if run.get("synthesis")]
    variants = synthesis_variants(runs)
    sections = []
    for dataset, arch in sorted({(run["dataset"], run["arch"]) for run in datafree}):
        lines = [f"### Data-free KD: {dataset}, student {arch}", "",
                 "| model | runs | accuracy | synthesis s | synthetic samples |",
                 "|---|---|---|---|---|"]  # fmt: skip
        for label, role, method in rows:
            cells: dict[tuple, list[dict]] = defaultdict(list)
            for run in runs:
                if (run["dataset"], run["role"], run["method"]) == (dataset, role, method) and (
                    role == "teacher" or run["arch"] == arch
                ):
                    cells[variants.get(id(run), ((), ""))].append(run)
            for key, variant in sorted(cells):
                lines.append(_datafree_row(label + variant, cells[(key, variant)]))
        sections.append("\n".join(lines))
    if not sections:
        return ""
    note = ("Accuracy in % on the real test split, mean ± std over seeds and folds; data-free "
            "students never saw a real training clip.")  # fmt: skip
    if variants:
        note += " " + VARIANTS_NOTE
    return "\n" + "\n\n".join(sections) + "\n\n" + note + "\n"


def update_readme(readme: str | Path, table: str) -> None:
    """Replace the text between the results markers of ``readme`` with ``table``."""
    readme = Path(readme)
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme} has no {README_START} ... {README_END} markers")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_START}\n{table}{README_END}{tail}")


def main(
    argv: list[str] | None = None, sections: Callable[[list[dict]], str] | None = None
) -> None:
    """Stage 8: collect results, write RESULTS.md (+ README table) and each run's curves.

    ``sections(runs)`` is a recipe's own Markdown after the results table, in RESULTS.md and the
    README alike (the sound recipe's data-free table: ``recipes/sound_classification/local/
    report.py``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exp_dir", help="folder searched recursively for results.json")
    parser.add_argument("--out", required=True, help="Markdown file to write (RESULTS.md)")
    parser.add_argument("--readme", help="README whose results markers get the table")
    parser.add_argument("--title", default="Results")
    args = parser.parse_args(argv)
    runs = collect(args.exp_dir)
    if not runs:
        raise SystemExit(f"No results.json under {args.exp_dir}: run the evaluation stage first")
    stale = stale_data_runs(runs)
    if stale:
        raise SystemExit(
            f"Refusing to report {len(stale)} run(s) trained on other data than the prepared data "
            f"now: {', '.join(stale)}. Report another --exp_dir, or delete these folders and rerun."
        )
    top = Path(Path(args.exp_dir).resolve().name)  # run titles start at exp_dir's own name
    for run in runs:
        history = Path(run["run_dir"]) / "history.json"
        if history.is_file():
            title = str(top / history.parent.relative_to(args.exp_dir))
            plot_history(history, history.parent / "curves.png", title)
    table = results_table(runs) + (sections(runs) if sections is not None else "")
    Path(args.out).write_text(f"# {args.title}\n\n{table}")
    if args.readme:
        update_readme(args.readme, table)
    print(table)


if __name__ == "__main__":
    main()
