"""Stage 8's paper table: per student size, every method's DCASE metrics and IUSP's headline figure.

    python local/report.py exp/sonyc_ust --out exp/sonyc_ust/RESULTS.md [--figure sim.png]

Appends to ``--out`` (after the generic table of ``python -m kd_modules.results``): one table per
student architecture, rows = methods, columns = coarse and fine micro-AUPRC, macro-AUPRC and
micro-F1 (mean ± std over seeds, %), params and MACs; then, per student, the table of the IUSP
paper's headline figure: ΔSP, ΔIUSP and ``(ΔIUSP − ΔSP)/ΔSP`` with
``Δ = micro-AUPRC(method) − micro-AUPRC(student alone)`` (means over seeds), for IUSP against SP
and KD+IUSP against KD+SP at each level, beside the paper's 27.1 %–122.4 % (a footnote explains
the ratio left undefined when ΔSP ≤ 0). With
``--figure`` it also draws, for the first clip of the test split (the release's validate), the
T×T frame-similarity matrices G of the ``frames`` layer as IUSP compares them (each pooled to
the fewest frames, the teacher's) of the teacher and of each student alone, with SP and with
IUSP, side by side: one colour scale and bar, frames (with their hop in ms) on both axes, each
panel titled with its model, the title naming the clip, the dataset and the runs' seed. When
any run is data-free (stage 6), the data-free table follows (``DATAFREE_ROWS``: coarse
micro-AUPRC, synthesis time, pool size and its embedding diversity within each tag).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from kd_modules.losses import IUSP
from kd_modules.losses.base import pool_time
from kd_modules.results import collect, stale_data_runs
from kd_modules.tables import _count, _mean_std, datafree_tables
from kd_modules.teacher import Teacher, preserved_random_state

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METHOD_ORDER = ("none", "kd", "sp", "iusp", "kd_sp", "kd_iusp", "fitnets")
COLUMNS = [
    (f"{level}_{name}", f"{level} {label}")
    for level in ("coarse", "fine")
    for name, label in (
        ("micro_auprc", "micro-AUPRC"),
        ("macro_auprc", "macro-AUPRC"),
        ("micro_f1", "micro-F1"),
    )
]
# Stage 6's comparison (data-free KD on a pool of tag sets): (row label, role, method).
DATAFREE_ROWS = (
    ("teacher", "teacher", "none"),
    ("student on real data", "student", "none"),
    ("KD on real data", "student", "kd"),
    ("DeepInversion", "student", "deepinversion"),
    ("CMI", "student", "cmi"),
    ("FRAMI", "student", "frami"),
)
PAPER_RANGE = "27.1 %–122.4 %"
SELECTION = "coarse_micro_auprc"


def group_runs(runs: list[dict]) -> dict[str, dict[str, list[dict]]]:
    """arch -> method -> runs (seeds); the teacher under its own arch."""
    groups: dict = defaultdict(lambda: defaultdict(list))
    for run in runs:
        groups[(run["role"], run["arch"])][run["method"]].append(run)
    return groups


def table(methods: dict[str, list[dict]]) -> list[str]:
    """Markdown rows: one per method in METHOD_ORDER (then any other), metrics mean ± std."""
    header = ["method", "seeds", *(label for _, label in COLUMNS), "params", "MACs"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    order = [m for m in METHOD_ORDER if m in methods] + sorted(set(methods) - set(METHOD_ORDER))
    for method in order:
        runs = methods[method]
        cells = [method, str(len(runs))]
        cells += [_mean_std([run["metrics"][key] for run in runs], 100.0) for key, _ in COLUMNS]
        cells += [_count(runs[0]["params"]), _count(runs[0]["macs"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


GAIN_PAIRS = (("iusp", "sp", "IUSP vs SP"), ("kd_iusp", "kd_sp", "KD+IUSP vs KD+SP"))
GAIN_HEADER = ["methods", "micro-AUPRC", "ΔSP (points)", "ΔIUSP (points)", "(ΔIUSP − ΔSP)/ΔSP"]
UNDEFINED = "undefined ¹"
GAIN_CAPTION = (
    "The paper's headline figure: Δ = micro-AUPRC(method) − micro-AUPRC(student alone), means "
    "over seeds, in points (ΔSP and ΔIUSP are those of KD+SP and KD+IUSP on the KD rows); the "
    f"paper reports (ΔIUSP − ΔSP)/ΔSP of {PAPER_RANGE}."
)
UNDEFINED_NOTE = (
    "¹ undefined: ΔSP ≤ 0, SP did not improve on the student alone, so there is no SP gain for "
    "(ΔIUSP − ΔSP)/ΔSP to be a fraction of (it would divide by zero or flip sign); compare ΔSP "
    "and ΔIUSP directly."
)


def mean_delta(methods: dict[str, list[dict]], method: str, key: str) -> float | None:
    """Δ of ``method`` on metric ``key``: its mean over seeds minus the student alone's, or None
    when either has no run."""
    if method not in methods or "none" not in methods:
        return None
    mean = {m: statistics.mean(run["metrics"][key] for run in methods[m]) for m in (method, "none")}
    return mean[method] - mean["none"]


def gain_cells(delta_iusp: float | None, delta_sp: float | None) -> list[str]:
    """ΔSP and ΔIUSP in points and ``(ΔIUSP − ΔSP)/ΔSP`` in % ("–" where a method has no run,
    UNDEFINED where ΔSP ≤ 0)."""
    points = ["–" if d is None else f"{100 * d:+.2f}" for d in (delta_sp, delta_iusp)]
    if delta_iusp is None or delta_sp is None:
        return [*points, "–"]
    if delta_sp <= 0:
        return [*points, UNDEFINED]
    return [*points, f"{100 * (delta_iusp - delta_sp) / delta_sp:+.1f} %"]


def gain_table(methods: dict[str, list[dict]]) -> list[str]:
    """The headline figure of one student as Markdown lines: the caption, a row per pair of
    methods and level (coarse, fine), and the footnote when a ratio is undefined."""
    header = ["| " + " | ".join(GAIN_HEADER) + " |", "|" + "---|" * len(GAIN_HEADER)]
    lines = [GAIN_CAPTION, "", *header]
    for better, base, name in GAIN_PAIRS:
        for level in ("coarse", "fine"):
            key = f"{level}_micro_auprc"
            cells = gain_cells(mean_delta(methods, better, key), mean_delta(methods, base, key))
            lines.append("| " + " | ".join([name, level, *cells]) + " |")
    if any(UNDEFINED in line for line in lines):
        lines += ["", UNDEFINED_NOTE]
    return lines


def paper_tables(runs: list[dict]) -> str:
    """The paper's table per student size, with the headline figure's table under each."""
    groups = group_runs(runs)
    parts = []
    for (role, arch), methods in sorted(groups.items(), key=lambda item: item[0][0] != "teacher"):
        parts.append(f"### {role} {arch}\n")
        parts += table(methods)
        if role == "student":
            parts += ["", *gain_table(methods)]
        parts.append("")
    return "\n".join(parts)


# ----- the frame-similarity figure --------------------------------------------------------------

FIGURE_METHODS = {"none": "alone", "sp": "SP", "iusp": "IUSP"}  # the students drawn, as titled
SIMILARITY_LABEL = "G[t, t′]: QQᵀ, rows L2-normalised\n(values in [−1, 1])"
Q_NOTE = "Q: the frames × features of the frames layer"


@dataclass
class Panel:
    """One matrix of the figure: its title, the seed of its run and its frames ``(T, D)``."""

    title: str
    seed: int
    frames: torch.Tensor


def similarity(frames: torch.Tensor) -> torch.Tensor:
    """IUSP's G of one clip: ``row_l2_normalise(Q Qᵀ)`` of its frames ``(T, D)`` -> ``(T, T)``."""
    q = frames.float()
    return F.normalize(q @ q.T, dim=1)


def clip_frames(run_dir: Path, feats: torch.Tensor) -> torch.Tensor:
    """The ``frames`` of a trained run's best checkpoint on features ``(1, T, F)``."""
    model = Teacher.from_experiment(run_dir, taps={"frames": "frames"}, max_key=SELECTION)
    return model(feats, torch.ones(1))["frames"][0]


def run_hparams(run_dir: Path) -> dict:
    """A run's saved ``hyperparams.yaml``, loaded without reseeding the caller."""
    from hyperpyyaml import load_hyperpyyaml

    with open(run_dir / "hyperparams.yaml") as stream, preserved_random_state():
        return load_hyperpyyaml(stream)


def clip_features(hparams: dict, wav: str) -> torch.Tensor:
    """The clean features ``(1, T, F)`` of one clip through a run's own front end."""
    from kd_modules.dataio import read_audio

    rate = hparams["sample_rate"]
    sig = read_audio(wav, rate)[None, : int(hparams["max_duration_s"] * rate)]
    return hparams["front_end"](sig, torch.ones(1))


def figure_runs(runs: list[dict]) -> list[tuple[str, dict]]:
    """(title, run) of the panels: the teacher, then each student arch alone, with SP and with
    IUSP, the first seed of each (empty when there is no teacher run)."""
    teachers = sorted((run for run in runs if run["role"] == "teacher"), key=lambda r: r["seed"])
    if not teachers:
        return []
    students = sorted(
        (run for run in runs if run["role"] == "student" and run["method"] in FIGURE_METHODS),
        key=lambda run: (run["arch"], METHOD_ORDER.index(run["method"]), run["seed"]),
    )
    chosen = {}
    for run in students:
        chosen.setdefault((run["arch"], run["method"]), run)
    panels = [(f"teacher {teachers[0]['arch']}", teachers[0])]
    for (arch, method), run in chosen.items():
        panels.append((f"student {arch}, {FIGURE_METHODS[method]}", run))
    return panels


def seeds_text(panels: list[Panel]) -> str:
    """``seed 1`` (or ``seeds 1, 2``): the seeds of the runs drawn."""
    seeds = sorted({panel.seed for panel in panels})
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds))


def similarity_figure(panels: list[Panel], hop_ms: float, clip: str, dataset: str) -> Figure:
    """A ``Figure`` of the panels' G side by side, the first (the teacher) the reference.

    Every panel's frames are average-pooled to the fewest frames among them, as IUSP pools the
    longer of teacher and student, so all matrices are T×T on one time grid of
    ``hop_ms × (feature frames // T)`` ms and on one colour scale (smallest to largest value
    shown; rows of unit L2 norm make values shrink as T grows, so only equal T compare). Each
    title gives the model, its own frame count and its IUSP loss to the teacher.
    """
    from matplotlib.figure import Figure

    length = min(panel.frames.shape[0] for panel in panels)
    pooled = [pool_time(panel.frames[None], length)[0] for panel in panels]
    matrices = [similarity(frames).numpy() for frames in pooled]
    low, high = min(g.min() for g in matrices), max(g.max() for g in matrices)
    distance = IUSP("frames")
    fig = Figure(figsize=(2.4 * len(panels) + 1.2, 3.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False, sharex=True, sharey=True)[0]
    for axis, panel, frames, g in zip(axes, panels, pooled, matrices):
        image = axis.imshow(g, cmap="viridis", vmin=low, vmax=high)
        own = panel.frames.shape[0]
        count = f"{own}" if own == length else f"{own}→{length}"
        d = distance({"frames": frames[None]}, {"frames": pooled[0][None]})
        loss = "" if panel is panels[0] else f"\nIUSP loss to teacher {float(d):.4f}"
        axis.set_title(f"{panel.title}\n{count} frames{loss}", fontsize=8, loc="left")
        axis.set_xlabel(f"frame t′ ({hop_ms:g} ms)", fontsize=8)
    axes[0].set_ylabel(f"frame t ({hop_ms:g} ms)", fontsize=8)
    fig.colorbar(image, ax=list(axes), shrink=0.9).set_label(SIMILARITY_LABEL, fontsize=8)
    heading = f"Frame similarity G of the frames layer, as IUSP compares them ({Q_NOTE})"
    fig.suptitle(f"{heading}\n{dataset}, clip {clip} (test split), {seeds_text(panels)}")
    return fig


def draw_similarities(runs: list[dict]) -> Figure | None:
    """The figure of the teacher and the students (alone, SP, IUSP; first seed) on the first
    test clip, through the teacher's front end (None when there is no teacher run)."""
    chosen = figure_runs(runs)
    if not chosen:
        return None
    teacher = chosen[0][1]
    manifest = json.loads(Path(teacher["data_files"]["manifests"]["test"]).read_text())
    clip = manifest[sorted(manifest)[0]]
    hparams = run_hparams(Path(teacher["run_dir"]))
    feats = clip_features(hparams, clip["wav"])
    panels = [
        Panel(title, run["seed"], clip_frames(Path(run["run_dir"]), feats)) for title, run in chosen
    ]
    hop_ms = hparams["hop_length"] * (feats.shape[1] // min(p.frames.shape[0] for p in panels))
    return similarity_figure(panels, hop_ms, clip["audio_filename"], teacher["dataset"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exp_dir", help="folder searched recursively for results.json")
    parser.add_argument("--out", required=True, help="RESULTS.md to append the paper table to")
    parser.add_argument("--figure", help="PNG of the frame-similarity matrices")
    args = parser.parse_args(argv)
    runs = [run for run in collect(args.exp_dir) if run.get("task") == "audio_tagging"]
    if not runs:
        raise SystemExit(f"No audio-tagging results.json under {args.exp_dir}: run stage 7")
    stale = stale_data_runs(runs)
    if stale:
        raise SystemExit(f"Refusing to report runs trained on other data: {', '.join(stale)}")
    text = "\n## The paper's table (DCASE 2019 Task 5 metrics on validate, %)\n\n"
    text += paper_tables(runs)
    text += datafree_tables(runs, DATAFREE_ROWS, SELECTION, "coarse micro-AUPRC")
    fig = draw_similarities(runs) if args.figure else None
    if fig is not None:
        fig.savefig(args.figure, dpi=80)
        text += f"\n![frame similarity]({Path(args.figure).name})\n"
    with open(args.out, "a") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
