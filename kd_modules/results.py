"""results.json (one schema for every recipe), training history, and the Markdown report.

Every run writes ``results.json`` in its experiment folder; ``collect`` finds them all and
``results_table`` prints mean ± std over seeds and folds for each (dataset, role, arch, method).
Run as ``python -m kd_modules.results EXP_DIR --out RESULTS.md [--readme README.md]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
from collections import defaultdict
from pathlib import Path

from kd_modules.dataio import write_json_atomic

REQUIRED_FIELDS = (
    "task", "dataset", "role", "method", "arch", "seed", "fold", "metrics", "params", "macs",
    "latency_ms", "checkpoint", "selection", "teacher_fingerprint", "versions", "git_commit",
    "wall_time_s",
)  # fmt: skip
README_START = "<!-- results:start -->"
README_END = "<!-- results:end -->"


def versions() -> dict[str, str]:
    """Versions of Python and the libraries a result depends on."""
    import speechbrain
    import torch
    import torchaudio

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchaudio": torchaudio.__version__,
        "speechbrain": speechbrain.__version__,
    }


def git_commit(path: str | Path = ".") -> str:
    """The repository's HEAD commit (with ``+dirty`` for local changes), or ``unknown``."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=path, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def write_results(path: str | Path, results: dict) -> None:
    """Validate the schema (every required field present) and write ``results.json``."""
    missing = [name for name in REQUIRED_FIELDS if name not in results]
    if missing:
        raise ValueError(f"results.json is missing fields {missing}")
    write_json_atomic(path, results)


def collect(exp_dir: str | Path) -> list[dict]:
    """Every ``results.json`` under ``exp_dir`` with its folder recorded as ``run_dir``."""
    runs = []
    for path in sorted(Path(exp_dir).rglob("results.json")):
        run = json.loads(path.read_text())
        run["run_dir"] = str(path.parent)
        runs.append(run)
    return runs


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
ROLE_ORDER = {"teacher": 0, "student": 1}


def results_table(runs: list[dict]) -> str:
    """Markdown table: one row per (dataset, role, arch, method), metrics as mean ± std (%)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        groups[(run["dataset"], run["role"], run["arch"], run["method"])].append(run)
    metric_names = sorted({name for run in runs for name in run["metrics"]})
    header = ["dataset", "role", "arch", "method", "runs", *metric_names, "params", "MACs",
              "CPU ms/clip", "epoch s"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    order = sorted(
        groups, key=lambda k: (k[0], ROLE_ORDER.get(k[1], 9), k[2], k[3] != "none", k[3])
    )
    for key in order:
        group = groups[key]
        cells = [*key, str(len(group))]
        for name in metric_names:
            scale = 100.0 if name in PERCENT_METRICS else 1.0
            cells.append(_mean_std([run["metrics"].get(name) for run in group], scale))
        cells.append(_count(group[0]["params"]))
        cells.append(_count(group[0]["macs"]))
        cells.append(_mean_std([run["latency_ms"] for run in group]))
        cells.append(_mean_std([run.get("epoch_time_s") for run in group]))
        lines.append("| " + " | ".join(cells) + " |")
    note = "Metrics in % where a rate (accuracy, EER, AUPRC, F1); mean ± std over seeds and folds."
    return "\n".join(lines) + "\n\n" + note + "\n"


def plot_history(history_file: str | Path, png: str | Path) -> None:
    """Draw a run's training curves: loss terms (train) and validation metrics per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = json.loads(Path(history_file).read_text())
    fig, (ax_loss, ax_valid) = plt.subplots(1, 2, figsize=(10, 3.5))
    for stage, axis in (("train", ax_loss), ("valid", ax_valid)):
        epochs = [entry["epoch"] for entry in history if entry["stage"] == stage]
        names = sorted({k for e in history if e["stage"] == stage for k in e["stats"]})
        for name in names:
            values = [e["stats"].get(name) for e in history if e["stage"] == stage]
            axis.plot(epochs, values, marker="o", label=name)
        axis.set_xlabel("epoch")
        axis.set_title(f"{stage} per epoch")
        if names:
            axis.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)


def update_readme(readme: str | Path, table: str) -> None:
    """Replace the text between the results markers of ``readme`` with ``table``."""
    readme = Path(readme)
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme} has no {README_START} ... {README_END} markers")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_START}\n{table}{README_END}{tail}")


def main(argv: list[str] | None = None) -> None:
    """Stage 8: collect results, write RESULTS.md (+ README table) and each run's curves."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exp_dir", help="folder searched recursively for results.json")
    parser.add_argument("--out", required=True, help="Markdown file to write (RESULTS.md)")
    parser.add_argument("--readme", help="README whose results markers get the table")
    parser.add_argument("--title", default="Results")
    args = parser.parse_args(argv)
    runs = collect(args.exp_dir)
    if not runs:
        raise SystemExit(f"No results.json under {args.exp_dir}: run the evaluation stage first")
    for run in runs:
        history = Path(run["run_dir"]) / "history.json"
        if history.is_file():
            plot_history(history, Path(run["run_dir"]) / "curves.png")
    table = results_table(runs)
    Path(args.out).write_text(f"# {args.title}\n\n{table}")
    if args.readme:
        update_readme(args.readme, table)
    print(table)


if __name__ == "__main__":
    main()
