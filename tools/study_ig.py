#!/usr/bin/env python3
"""Study: what IML-KD's integrated gradients cost per step rule, and how close their maps are.

On real speech (training segments of a prepared speaker-verification data folder) and a trained
teacher (a stage-2 run folder of ``recipes/speaker_verification``), for each variant ``rule:steps``
it computes the IG maps of the teacher's cosine score of the true speaker at the recipe's
segment durations (``kd_modules.teacher.IntegratedTeacher.maps``, what stage 3 runs per cached
crop) and prints:

- the completeness gap over every IG segment s: Σ_s |Σ A − (F(s) − F(s′))| / Σ_s |F(s) − F(s′)|,
  and the worst segment's own relative gap;
- the time per training crop (seconds of CPU for the maps of one crop, median over the repeats;
  the variants are interleaved round by round, after one untimed round, so load swings hit all;
  the reference is not timed);
- the agreement of IML-KD's weight map ``mean_d norm(|A_d|)`` with that of the reference variant
  (default 200 Gauss–Legendre nodes): mean relative error Σ|w − w_ref| / Σ|w_ref| and Spearman's
  rank correlation of the (t, f) cells, both averaged over the crops.

    python tools/study_ig.py --teacher_folder exp/librispeech/teacher/ecapa_tiny/none/seed1 \\
        --data_folder data/librispeech --crops 8 --repeats 5

``--compare_caches A B`` instead compares the ``ig_weight`` maps of two IML-KD teacher caches
(e.g. ``ig_views`` per_view and shared) view by view: the same MRE (B against A) and Spearman ρ.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from hyperpyyaml import load_hyperpyyaml
from scipy.stats import spearmanr
from torch import Tensor

from kd_modules.attribution import IntegratedInput, segment_gaps
from kd_modules.cache import TeacherCache
from kd_modules.dataio import read_audio
from kd_modules.teacher import IntegratedTeacher, Teacher

VARIANTS = (
    "riemann_right:20",
    "riemann_right:50",
    "riemann_trapezoid:20",
    "gausslegendre:2",
    "gausslegendre:4",
    "gausslegendre:8",
    "gausslegendre:16",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher_folder", type=Path, help="a stage-2 run folder")
    parser.add_argument("--data_folder", type=Path, help="holds train.json")
    parser.add_argument("--compare_caches", type=Path, nargs=2, help="two IML-KD caches")
    parser.add_argument("--crops", type=int, default=8, help="training crops (one batch)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (interleaved)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), help="rule:steps")
    parser.add_argument("--reference", default="gausslegendre:200", help="rule:steps")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    return parser.parse_args(argv)


def variant(text: str) -> tuple[str, int]:
    """``rule:steps`` -> (rule, steps)."""
    rule, _, steps = text.partition(":")
    if not steps.isdigit():
        raise SystemExit(f"--variants/--reference: expected rule:steps, got {text!r}")
    return rule, int(steps)


def load_crops(data_folder: Path, hparams: dict, count: int) -> tuple[Tensor, Tensor, list[str]]:
    """Features (count, T, F) of the first crop_s of the first ``count`` training segments at
    least crop_s long (the recipe's front end), their speaker labels (count,) and ids."""
    manifest = json.loads((data_folder / "train.json").read_text())
    rate, crop_s = hparams["sample_rate"], hparams["crop_s"]
    samples = round(crop_s * rate)
    chosen = [(k, v) for k, v in manifest.items() if v["duration"] >= crop_s][:count]
    if len(chosen) < count:
        raise SystemExit(f"{data_folder}/train.json: {len(chosen)} segments of >= {crop_s} s")
    wavs = torch.stack(
        [read_audio(v["wav"], rate, v["start"], v["start"] + samples) for _, v in chosen]
    )
    with torch.no_grad():
        feats = hparams["front_end"](wavs, torch.ones(count))
    labels = torch.tensor([v["spk_label"] for _, v in chosen])
    return feats, labels, [k for k, _ in chosen]


def score_forward(teacher: Teacher, targets: Tensor):
    """(x (N, t, F), rows (N,)) -> (N,): the teacher's cosine of each row's true speaker."""
    model = teacher.model.eval()

    def forward(x: Tensor, rows: Tensor) -> Tensor:
        out = model(x, torch.ones(x.shape[0]))["cosine"]
        return out.gather(1, targets[rows].unsqueeze(1)).squeeze(1)

    return forward


def agreement(weight: Tensor, reference: Tensor) -> tuple[float, float]:
    """(mean relative error, mean Spearman ρ) of weight maps (B, T, F) against the reference."""
    errors = (weight - reference).abs().flatten(1).sum(1) / reference.abs().flatten(1).sum(1)
    rhos = [spearmanr(w.flatten(), r.flatten()).statistic for w, r in zip(weight, reference)]
    return errors.mean().item(), float(statistics.mean(rhos))


def study(
    teacher: Teacher,
    hparams: dict,
    feats: Tensor,
    labels: Tensor,
    variants: list[str],
    reference: str,
    repeats: int,
) -> list[dict]:
    """One row per variant, the reference last: gap, seconds per crop (None for the reference,
    which is not timed), agreement with the reference. ``teacher`` is the trained teacher,
    ``hparams`` its run's (``ig_durations_s``, ``hop_length``), ``feats`` (B, T, F) the crops'
    features and ``labels`` (B,) their speakers."""
    lens = torch.ones(feats.shape[0])
    forward = score_forward(teacher, labels)

    def integrated(text: str) -> IntegratedInput:
        rule, steps = variant(text)
        return IntegratedInput(hparams["ig_durations_s"], hparams["hop_length"], steps, rule)

    names = [*variants, reference]
    makers = {name: IntegratedTeacher(teacher, integrated(name)) for name in names}
    maps = {name: maker.maps(feats, lens, labels) for name, maker in makers.items()}  # untimed
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for name in variants:
            start = time.perf_counter()
            makers[name].maps(feats, lens, labels)
            times[name].append((time.perf_counter() - start) / feats.shape[0])
    target = makers[reference].integrated.weight(maps[reference], lens)
    rows = []
    for name, maker in makers.items():
        frames = maker.integrated.segment_frames()
        ends = [segment_gaps(forward, feats, lens, f, a) for f, a in zip(frames, maps[name])]
        gaps = torch.cat([gap for gap, _ in ends]).abs()
        deltas = torch.cat([delta for _, delta in ends]).abs()
        error, rho = agreement(maker.integrated.weight(maps[name], lens), target)
        rows.append(
            {
                "variant": name,
                "gap": (gaps.sum() / deltas.sum()).item(),
                "gap_max": (gaps / deltas.clamp_min(1e-12)).max().item(),
                "s_per_crop": statistics.median(times[name]) if times[name] else None,
                "rel_error": error,
                "spearman": rho,
            }
        )
    return rows


def compare_caches(first: Path, second: Path) -> tuple[int, float, float]:
    """(views compared, mean relative error of second's maps against first's, mean Spearman ρ)
    over every (utterance, view) both IML-KD caches store."""
    a, b = TeacherCache(first), TeacherCache(second)
    errors, rhos = [], []
    for utt in sorted(set(a.index) & set(b.index)):
        for view in range(min(a.meta["n_views"], b.meta["n_views"])):
            reference = a.read(utt, view)[0]["ig_weight"].float().unsqueeze(0)
            weight = b.read(utt, view)[0]["ig_weight"].float().unsqueeze(0)
            error, rho = agreement(weight, reference)
            errors.append(error)
            rhos.append(rho)
    return len(errors), statistics.mean(errors), statistics.mean(rhos)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.compare_caches:
        count, error, rho = compare_caches(*args.compare_caches)
        print(f"{count} views: MRE {error:.3f}, Spearman {rho:.3f}")
        return
    if args.teacher_folder is None or args.data_folder is None:
        raise SystemExit("give --teacher_folder and --data_folder (or --compare_caches A B)")
    torch.set_num_threads(args.threads)
    with open(args.teacher_folder / "hyperparams.yaml") as stream:
        hparams = load_hyperpyyaml(stream)
    teacher = Teacher.from_experiment(args.teacher_folder, **hparams["teacher_selection"])
    feats, labels, _ = load_crops(args.data_folder, hparams, args.crops)
    rows = study(teacher, hparams, feats, labels, args.variants, args.reference, args.repeats)
    print(
        f"{args.crops} crops, teacher {args.teacher_folder}, {args.repeats} interleaved rounds, "
        f"{args.threads} torch thread(s); reference {args.reference}"
    )
    print("| rule:steps | gap | worst segment | s / crop | × riemann_right:20 | MRE | Spearman |")
    print("|---|---|---|---|---|---|---|")
    base = next((r["s_per_crop"] for r in rows if r["variant"] == "riemann_right:20"), None)
    for row in rows:
        seconds = row["s_per_crop"]
        ratio = f"{seconds / base:.2f}" if base and seconds else "–"
        seconds = f"{seconds:.3f}" if seconds else "(not timed)"
        print(
            f"| {row['variant']} | {row['gap']:.2e} | {row['gap_max']:.2e} | "
            f"{seconds} | {ratio} | {row['rel_error']:.3f} | {row['spearman']:.3f} |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
