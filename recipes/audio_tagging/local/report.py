"""Stage 8's paper table: per student size, every method's DCASE metrics and IUSP's headline figure.

    python local/report.py exp/sonyc_ust --out exp/sonyc_ust/RESULTS.md [--figure sim.png]

Appends to ``--out`` (after the generic table of ``python -m kd_modules.results``): one table per
student architecture, rows = methods, columns = coarse and fine micro-AUPRC, macro-AUPRC and
micro-F1 (mean ± std over seeds, %), params and MACs; then, per student, the table of the IUSP
paper's headline figure: ΔSP, ΔIUSP and ``(ΔIUSP − ΔSP)/ΔSP`` with
``Δ = micro-AUPRC(method) − micro-AUPRC(student alone)`` (means over seeds), for IUSP against SP
and KD+IUSP against KD+SP at each level, beside the paper's 27.1 %–122.4 % (a footnote explains
the ratio left undefined when ΔSP ≤ 0). With
``--figure`` it also draws, for one validate clip, the T×T frame-similarity matrices (the ``frames``
layer, as IUSP compares them) of the teacher and of each student, side by side.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

from kd_modules.losses import IUSP
from kd_modules.results import _count, _mean_std, collect, stale_data_runs
from kd_modules.teacher import Teacher, preserved_random_state

METHOD_ORDER = ("none", "kd", "sp", "iusp", "kd_sp", "kd_iusp", "fitnets")
COLUMNS = [(f"{level}_{name}", f"{level} {label}") for level in ("coarse", "fine")
           for name, label in (("micro_auprc", "micro-AUPRC"), ("macro_auprc", "macro-AUPRC"),
                               ("micro_f1", "micro-F1"))]  # fmt: skip
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


def similarity(frames: torch.Tensor) -> torch.Tensor:
    """IUSP's G of one clip: ``row_l2_normalise(Q Qᵀ)`` of its frames ``(T, D)`` -> ``(T, T)``."""
    q = frames.float()
    return F.normalize(q @ q.T, dim=1)


def clip_frames(run_dir: Path, feats: torch.Tensor) -> torch.Tensor:
    """The ``frames`` of a trained run's best checkpoint on features ``(1, T, F)``."""
    model = Teacher.from_experiment(run_dir, taps={"frames": "frames"}, max_key=SELECTION)
    return model(feats, torch.ones(1))["frames"][0]


def clip_features(teacher_dir: Path, wav: str) -> torch.Tensor:
    """The clean features ``(1, T, F)`` of one clip through the teacher run's own front end."""
    from hyperpyyaml import load_hyperpyyaml

    from kd_modules.dataio import read_audio

    with open(teacher_dir / "hyperparams.yaml") as stream, preserved_random_state():
        hparams = load_hyperpyyaml(stream)
    rate = hparams["sample_rate"]
    sig = read_audio(wav, rate)[None, : int(hparams["max_duration_s"] * rate)]
    return hparams["front_end"](sig, torch.ones(1))


def draw_similarities(runs: list[dict], png: Path) -> Path | None:
    """Teacher and students (alone, SP, IUSP; first seed) on the first validate clip."""
    from matplotlib.figure import Figure

    teachers = [run for run in runs if run["role"] == "teacher"]
    if not teachers:
        return None
    teacher_dir = Path(teachers[0]["run_dir"])
    manifest = json.loads(Path(teachers[0]["data_files"]["manifests"]["test"]).read_text())
    clip = manifest[sorted(manifest)[0]]
    feats = clip_features(teacher_dir, clip["wav"])
    panels = [("teacher " + teachers[0]["arch"], teacher_dir)]
    students = sorted(
        (
            run
            for run in runs
            if run["role"] == "student" and run["method"] in ("none", "sp", "iusp")
        ),
        key=lambda run: (run["arch"], METHOD_ORDER.index(run["method"]), run["seed"]),
    )
    seen = set()
    for run in students:
        if (run["arch"], run["method"]) not in seen:
            seen.add((run["arch"], run["method"]))
            panels.append((f"{run['arch']} {run['method']}", Path(run["run_dir"])))
    frames = {name: clip_frames(folder, feats) for name, folder in panels}
    teacher_frames = frames[panels[0][0]]
    distance = IUSP("frames")
    fig = Figure(figsize=(2.6 * len(panels), 3), layout="constrained")
    for axis, (name, _) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        axis.imshow(similarity(frames[name]).numpy(), cmap="viridis")  # own scale per panel
        d = distance({"frames": frames[name][None]}, {"frames": teacher_frames[None]})
        axis.set_title(f"{name}\nT={frames[name].shape[0]}, IUSP to teacher {float(d):.4f}",
                       fontsize=8)  # fmt: skip
        axis.set_xticks([]), axis.set_yticks([])
    fig.suptitle(f"Frame similarity G (T×T, frames layer), clip {clip['audio_filename']}")
    fig.savefig(png, dpi=80)
    return png


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
    if args.figure and draw_similarities(runs, Path(args.figure)):
        text += f"\n![frame similarity]({Path(args.figure).name})\n"
    with open(args.out, "a") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
