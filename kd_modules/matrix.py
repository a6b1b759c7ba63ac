"""The method × task matrix: each KD method's change against the student alone, on every task.

Computed from results.json runs only (the dicts :func:`kd_modules.results.collect` reads). A
column compares like with like: one task, dataset, student arch and teacher (the teacher named by
its arch, found through the students' ``teacher_fingerprint``; folds and seeds of one teacher
arch share a column). A row is a method (any name found in results.json, except ``none``, the
student alone). A cell is the change of the task's headline metric (:data:`HEADLINES`) against
the student alone of its column, mean ± std over the method's runs, each run compared with the
student alone of its own fold and seed (else of its fold, else all of them), and the ratio of
the method's mean epoch time to the student alone's.

``matrix_cells`` computes the cells; ``matrix_markdown``, ``write_matrix_csv`` and
``plot_matrix`` write them as a Markdown table, a CSV (one line per cell) and a heat map.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Headline:
    """A task's headline metric: its results.json name, how a change is measured and shown.

    ``relative``: the change in % of the student alone's value (EER), else in points (the
    metric × 100 minus the student alone's); ``higher_is_better`` sets the heat map's colours.
    """

    short: str
    metric: str
    label: str
    relative: bool = False
    higher_is_better: bool = True

    @property
    def unit(self) -> str:
        return "% relative" if self.relative else "points"

    def change(self, value: float, baseline: float) -> float:
        """The change of ``value`` against ``baseline`` (both rates in [0, 1])."""
        if self.relative:
            return (value - baseline) / baseline * 100.0 if baseline else math.nan
        return (value - baseline) * 100.0


HEADLINES = {
    "sound_classification": Headline("sound", "accuracy", "accuracy"),
    "audio_tagging": Headline("tagging", "coarse_micro_auprc", "coarse micro-AUPRC"),
    "speaker_verification": Headline(
        "speaker", "eer", "EER", relative=True, higher_is_better=False
    ),
}
BASELINE = "none"
MISSING, NO_BASELINE = "¹", "²"


@dataclass(frozen=True)
class Column:
    """One comparison: a task, dataset, student arch and teacher (its arch, or fingerprint)."""

    task: str
    dataset: str
    arch: str
    teacher: str

    @property
    def label(self) -> str:
        short = HEADLINES[self.task].short
        return f"{short} ({self.dataset}, {self.arch}, {self.teacher} teacher)"


@dataclass
class Cell:
    """A method's changes (one per run) on a column and its epoch-time ratio (None: unknown)."""

    changes: list[float] = field(default_factory=list)
    time_ratio: float | None = None

    @property
    def mean(self) -> float:
        return statistics.mean(self.changes) if self.changes else math.nan

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.changes) if len(self.changes) > 1 else None


@dataclass
class Matrix:
    """Rows (methods), columns and cells; ``baselines`` holds the columns with a student alone."""

    methods: list[str]
    columns: list[Column]
    cells: dict[tuple[str, Column], Cell]
    baselines: set[Column]
    skipped_tasks: list[str]


def _teacher_names(runs: list[dict]) -> dict[str, str]:
    """A teacher's model fingerprint -> its arch (from the teacher runs among ``runs``)."""
    return {
        run["model_fingerprint"]: run["arch"]
        for run in runs
        if run["role"] == "teacher" and run.get("model_fingerprint")
    }


def _teacher_of(run: dict, names: dict[str, str]) -> str:
    fingerprint = run["teacher_fingerprint"]
    return names.get(fingerprint, f"fingerprint {fingerprint[:8]}")


def _metric(run: dict) -> float | None:
    return run["metrics"].get(HEADLINES[run["task"]].metric)


def _baseline_value(run: dict, baselines: list[dict]) -> float:
    """Mean headline metric of the students alone of ``run``'s fold and seed (else its fold,
    else all of them)."""
    for same in (("fold", "seed"), ("fold",), ()):
        matched = [b for b in baselines if all(b.get(k) == run.get(k) for k in same)]
        values = [_metric(b) for b in matched if _metric(b) is not None]
        if values:
            return statistics.mean(values)
    return math.nan


def _mean_time(runs: list[dict]) -> float | None:
    times = [run["epoch_time_s"] for run in runs if run.get("epoch_time_s")]
    return statistics.mean(times) if times else None


def _cell(method_runs: list[dict], baselines: list[dict], headline: Headline) -> Cell:
    changes = [
        headline.change(_metric(run), _baseline_value(run, baselines))
        for run in method_runs
        if _metric(run) is not None
    ]
    method_time, baseline_time = _mean_time(method_runs), _mean_time(baselines)
    ratio = method_time / baseline_time if method_time and baseline_time else None
    return Cell([c for c in changes if not math.isnan(c)], ratio)


def matrix_cells(runs: list[dict]) -> Matrix:
    """The matrix of ``runs`` (students of any task in :data:`HEADLINES`; teacher runs name
    the teachers). Runs of other tasks are left out, their task listed in ``skipped_tasks``."""
    names = _teacher_names(runs)
    students = [run for run in runs if run["role"] == "student"]
    skipped = sorted({run["task"] for run in students if run["task"] not in HEADLINES})
    students = [run for run in students if run["task"] in HEADLINES]
    alone: dict[tuple, list[dict]] = defaultdict(list)
    distilled: dict[tuple[str, Column], list[dict]] = defaultdict(list)
    for run in students:
        group = (run["task"], run["dataset"], run["arch"])
        if run["method"] == BASELINE:
            alone[group].append(run)
        elif run.get("teacher_fingerprint"):
            column = Column(*group, _teacher_of(run, names))
            distilled[(run["method"], column)].append(run)
    columns = sorted({column for _, column in distilled}, key=lambda c: (c.task, c.label))
    methods = sorted({method for method, _ in distilled})
    cells = {}
    for (method, column), method_runs in distilled.items():
        baselines = alone.get((column.task, column.dataset, column.arch), [])
        if baselines:
            cells[(method, column)] = _cell(method_runs, baselines, HEADLINES[column.task])
    with_baseline = {c for c in columns if alone.get((c.task, c.dataset, c.arch))}
    return Matrix(methods, columns, cells, with_baseline, skipped)


def cell_text(cell: Cell) -> str:
    """``+1.23 ± 0.45 (×1.80)``: the mean change, its std over runs (when several), the
    epoch-time ratio (when known)."""
    if not cell.changes:
        return "–"
    text = f"{cell.mean:+.2f}"
    if cell.std is not None:
        text += f" ± {cell.std:.2f}"
    if cell.time_ratio is not None:
        text += f" (×{cell.time_ratio:.2f})"
    return text


def _shown(matrix: Matrix, method: str, column: Column) -> str:
    if column not in matrix.baselines:
        return "–" + NO_BASELINE
    cell = matrix.cells.get((method, column))
    return cell_text(cell) if cell is not None else "–" + MISSING


def _unit_note(headline: Headline) -> str:
    """``speaker: EER change in % relative (lower EER is better: ...)`` for the caption."""
    if headline.higher_is_better:
        sign = "positive: better"
    else:
        sign = f"lower {headline.label} is better: a negative change is an improvement"
    return f"{headline.short}: {headline.label} change in {headline.unit} ({sign})"


def _caption(matrix: Matrix) -> str:
    tasks = [task for task in HEADLINES if any(c.task == task for c in matrix.columns)]
    units = "; ".join(_unit_note(HEADLINES[task]) for task in tasks)
    lines = [
        "Each cell: the method's change against the student alone (method `none`) of its column "
        f"(same task, dataset, student arch; {units}), mean ± std over its runs (seeds and "
        "folds, each run against the student alone of its fold and seed), and in brackets its "
        "mean epoch time over the student alone's. Computed from results.json files only.",
        "",
    ]
    missing = any(
        (method, column) not in matrix.cells
        for method in matrix.methods
        for column in matrix.baselines
    )
    if missing:
        lines.append(
            f"{MISSING} no run of this method in this column (its YAML is absent there or it was "
            "not run)."
        )
    if len(matrix.baselines) < len(matrix.columns):
        lines.append(f"{NO_BASELINE} no student-alone run in this column to compare with.")
    if matrix.skipped_tasks:
        lines.append(f"Left out (no headline metric known): {', '.join(matrix.skipped_tasks)}.")
    return "\n".join(lines)


def matrix_markdown(matrix: Matrix) -> str:
    """The Markdown table (methods as rows, columns as :attr:`Column.label`) and its caption."""
    if not matrix.columns:
        return "No KD student with a student alone to compare with.\n"
    header = ["method", *(column.label for column in matrix.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in matrix.methods:
        cells = [_shown(matrix, method, column) for column in matrix.columns]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + _caption(matrix) + "\n"


CSV_FIELDS = (
    "method",
    "column",
    "task",
    "dataset",
    "arch",
    "teacher",
    "metric",
    "unit",
    "runs",
    "mean_change",
    "std_change",
    "epoch_time_ratio",
)


def write_matrix_csv(matrix: Matrix, path: str | Path) -> None:
    """One line per computed cell (:data:`CSV_FIELDS`; std and ratio empty when unknown)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_FIELDS)
        for method in matrix.methods:
            for column in matrix.columns:
                cell = matrix.cells.get((method, column))
                if cell is None or not cell.changes:
                    continue
                headline = HEADLINES[column.task]
                writer.writerow(
                    [
                        method,
                        column.label,
                        column.task,
                        column.dataset,
                        column.arch,
                        column.teacher,
                        headline.metric,
                        headline.unit,
                        len(cell.changes),
                        f"{cell.mean:.6g}",
                        "" if cell.std is None else f"{cell.std:.6g}",
                        "" if cell.time_ratio is None else f"{cell.time_ratio:.6g}",
                    ]
                )


def improvement_grid(matrix: Matrix) -> list[list[float]]:
    """Rows × columns of the mean change signed so that > 0 is better (EER's negated); NaN
    where a cell is empty."""
    grid = []
    for method in matrix.methods:
        row = []
        for column in matrix.columns:
            cell = matrix.cells.get((method, column))
            sign = 1.0 if HEADLINES[column.task].higher_is_better else -1.0
            row.append(sign * cell.mean if cell is not None and cell.changes else math.nan)
        grid.append(row)
    return grid


def plot_matrix(matrix: Matrix, path: str | Path, title: str) -> None:
    """The heat map: colour = improvement over the student alone (diverging, centred on 0),
    each cell annotated with the table's text (the change with its own sign, the time ratio)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    values = np.array(improvement_grid(matrix), dtype=float)
    grid = np.ma.masked_invalid(values.reshape(len(matrix.methods), len(matrix.columns)))
    bound = float(np.abs(grid).max()) if grid.count() else 1.0
    bound = bound or 1.0
    cmap = plt.get_cmap("RdBu").with_extremes(bad="0.85")  # empty cells grey
    width = 2.0 + 2.6 * max(len(matrix.columns), 1)
    height = 2.2 + 0.55 * max(len(matrix.methods), 1)
    fig, ax = plt.subplots(figsize=(width, height))
    image = ax.imshow(grid, cmap=cmap, vmin=-bound, vmax=bound, aspect="auto")
    for i, method in enumerate(matrix.methods):
        for j, column in enumerate(matrix.columns):
            text = _shown(matrix, method, column).replace(" (×", "\n(×")
            dark = not np.ma.is_masked(grid[i, j]) and abs(grid[i, j]) > 0.6 * bound
            colour = "white" if dark else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=colour)
    ax.set_xticks(range(len(matrix.columns)))
    ax.set_xticklabels([c.label.replace(" (", "\n(") for c in matrix.columns], fontsize=8)
    ax.set_yticks(range(len(matrix.methods)))
    ax.set_yticklabels(matrix.methods)
    ax.set_xlabel("task (dataset, student arch, teacher)")
    ax.set_ylabel("KD method")
    ax.set_title(title)
    bar = fig.colorbar(image, ax=ax)
    bar.set_label("improvement over the student alone\n(points; EER: −% relative change)")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")  # the colour bar's label in full
    plt.close(fig)


def write_matrix(runs: list[dict], out: str | Path, title: str) -> Matrix:
    """Write ``out`` (Markdown) and, beside it, the same stem's ``.csv`` and ``.png``."""
    out = Path(out)
    matrix = matrix_cells(runs)
    out.parent.mkdir(parents=True, exist_ok=True)  # e.g. --out results/RESULTS_MATRIX.md
    out.write_text(f"# {title}\n\n{matrix_markdown(matrix)}")
    write_matrix_csv(matrix, out.with_suffix(".csv"))
    plot_matrix(matrix, out.with_suffix(".png"), title)
    return matrix
