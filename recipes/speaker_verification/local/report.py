#!/usr/bin/env python3
"""Stage 8 (after kd_modules.results' table): the IML-KD comparison and the attribution figure.

    python local/report.py exp/voxceleb1 --out exp/voxceleb1/RESULTS.md \
        --data_folder data/voxceleb1 --figure exp/voxceleb1/integrated_gradients.png \
        --teacher_folder exp/voxceleb1/teacher/ecapa_c1024/none/seed1

Appends to RESULTS.md, per student architecture: EER and minDCF (mean ± std over seeds) of each
method, and the relative EER change of IML-KD against the best KD baseline (the lowest mean EER
among logit KD, embedding KD, MLKD and DKD) beside the paper's −5 %. The figure shows, for one
validation segment, its fbank and the teacher's integrated-gradients maps at each duration of
hparams/kd/imlkd.yaml, and the resulting integrated input.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

import torch
import yaml

from kd_modules.results import collect
from kd_modules.tables import _mean_std

BASELINES = ("kd", "embedding_cosine", "embedding_mse", "mlkd", "dkd")
PAPER_RELATIVE_EER = -5.0  # docs/METHODS.md §2: IML-KD against the best KD baseline


def comparison(runs: list[dict]) -> str:
    """Markdown: per student arch, EER / minDCF per method and IML-KD's change vs the best
    baseline."""
    by_arch: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if run["role"] == "student":
            by_arch[run["arch"]][run["method"]].append(run)
    lines = ["## IML-KD against the KD baselines", ""]
    for arch, methods in sorted(by_arch.items()):
        lines += [
            f"### Student {arch}",
            "",
            "| method | runs | EER (%) | minDCF | AS-norm EER (%) |",
            "|---|---|---|---|---|",
        ]

        eer = {m: statistics.mean(r["metrics"]["eer"] for r in rs) for m, rs in methods.items()}
        for method, group in sorted(methods.items(), key=lambda item: eer[item[0]]):
            cells = [
                method,
                str(len(group)),
                _mean_std([r["metrics"]["eer"] for r in group], 100, 2),
                _mean_std([r["metrics"]["min_dcf"] for r in group], 1, 4),
                _mean_std([r["metrics"].get("asnorm_eer", float("nan")) for r in group], 100, 2),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        baselines = {m: eer[m] for m in BASELINES if m in eer}
        lines.append("")
        if "imlkd" in eer and baselines:
            best = min(baselines, key=baselines.get)
            change = 100 * (eer["imlkd"] - baselines[best]) / baselines[best]
            lines.append(
                f"IML-KD vs the best baseline ({best}): relative EER change **{change:+.1f} %** "
                f"(paper: {PAPER_RELATIVE_EER:+.0f} % on VoxCeleb1)."
            )
        else:
            lines.append("IML-KD or every baseline is missing: no relative change to report.")
        lines.append("")
    return "\n".join(lines) + "\n"


def read_settings(kd_yaml: Path) -> dict:
    """The plain values of a KD YAML (its ``!new``/``!ref`` entries read as None)."""

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    return yaml.load(kd_yaml.read_text(), Loader=Loader)


def attribution_figure(teacher_folder: Path, data_folder: Path, png: Path, kd_yaml: Path) -> None:
    """fbank, A_d per duration and the integrated input of one validation segment (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from hyperpyyaml import load_hyperpyyaml

    from kd_modules.attribution import IntegratedInput
    from kd_modules.dataio import read_audio
    from kd_modules.teacher import IntegratedTeacher, Teacher, preserved_random_state

    # the attribution settings are common.yaml's (hparams/common.yaml next to kd/), unless the
    # KD YAML sets them
    settings = {**read_settings(kd_yaml.parents[1] / "common.yaml"), **read_settings(kd_yaml)}
    with open(teacher_folder / "hyperparams.yaml") as stream, preserved_random_state():
        hparams = load_hyperpyyaml(stream)
    integrated = IntegratedInput(
        durations_s=settings["ig_durations_s"],
        hop_length_ms=hparams["hop_length"],
        steps=settings["ig_steps"],
        rule=settings["ig_rule"],
        mode="mean",
        baseline=settings["ig_baseline"],
    )
    teacher = IntegratedTeacher(
        Teacher.from_experiment(teacher_folder, max_key="accuracy"),
        integrated,
        settings["attribution_score"],
    )
    utt, entry = sorted(json.loads((data_folder / "valid.json").read_text()).items())[0]
    wav = read_audio(entry["wav"], hparams["sample_rate"], entry["start"], entry["stop"])
    lens = torch.ones(1)
    feats = hparams["front_end"](wav.unsqueeze(0), lens)
    maps = teacher.maps(feats, lens, torch.tensor([entry["spk_label"]]))
    weight = integrated.weight(maps, lens)
    panels = [("fbank (sentence-mean normalised)", feats[0])]
    durations = integrated.durations_s
    panels += [(f"|IG|, segments of {d:g} s", m[0].abs()) for d, m in zip(durations, maps)]
    integrated_input = integrated.apply(feats, weight)[0]
    panels.append(("integrated input x * (1 + mean_d norm|A_d|)", integrated_input))
    figure, axes = plt.subplots(len(panels), 1, figsize=(9, 2.2 * len(panels)), sharex=True)
    for axis, (title, image) in zip(axes, panels):
        axis.imshow(image.T.detach().numpy(), origin="lower", aspect="auto", cmap="magma")
        axis.set_title(title, fontsize=9)
        axis.set_ylabel("mel bin")
    axes[-1].set_xlabel("frame (10 ms)")
    figure.suptitle(f"Teacher integrated gradients, segment {utt} (speaker {entry['spk_id']})")
    figure.tight_layout()
    figure.savefig(png, dpi=80)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exp_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="RESULTS.md to append to")
    parser.add_argument("--data_folder", type=Path, required=True)
    parser.add_argument("--teacher_folder", type=Path, required=True)
    parser.add_argument("--figure", type=Path, required=True)
    parser.add_argument("--kd_yaml", type=Path, default=Path("hparams/kd/imlkd.yaml"))
    args = parser.parse_args(argv)
    text = comparison(collect(args.exp_dir))
    attribution_figure(args.teacher_folder, args.data_folder, args.figure, args.kd_yaml)
    text += f"\n![Integrated gradients of the teacher]({args.figure.name})\n"
    with open(args.out, "a") as stream:
        stream.write("\n" + text)
    print(text)


if __name__ == "__main__":
    main()
