#!/usr/bin/env python3
"""Benchmark: our batched integrated gradients against Captum's, and the IML-KD segment maps.

Teacher: a small SpeechBrain ECAPA-TDNN with RANDOM weights (timing and agreement do not need a
trained model), in eval mode, frozen; F is the cosine of its embedding with a random speaker
prototype (one of 10) per clip, as IML-KD's "cosine score of the true speaker". Input: 80-bin
fbank of real LibriSpeech clips (``--clips`` of them, each cropped to ``--crop_s``, one batch),
sentence-mean normalised, baseline 0.

Rows: ours (``kd_modules.attribution.integrated_gradients``) and
``captum.attr.IntegratedGradients(...).attribute`` with the same steps, rule and baseline, all
steps in one batch; with ``--chunk_size c`` also both chunked (ours ``chunk_size=c``, Captum's
``internal_batch_size=c·B``: Captum counts expanded rows, not steps). Repeats are interleaved
(ours, ours + gap, Captum, ...) after one untimed warm-up each, so a load swing hits every
variant of its round; medians per utterance, the ratio of the medians and, per round, the median
and range of ours/Captum (give ``--repeats`` 15 or more on a busy machine). "ours"
is the map alone (``completeness=False``, what segment_attributions runs); "ours + completeness
gap" adds one no-grad forward of the 2B end points, which Captum does not compute. Last rows:
``segment_attributions`` at 0.5 / 1 / 2 s segments of a 3 s crop (IntegratedInput's defaults).

    python tools/benchmark_attribution.py --clips 8 --steps 20 --repeats 15
    python tools/benchmark_attribution.py --device cuda --clips 32 --chunk_size 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from captum.attr import IntegratedGradients
from speechbrain.lobes.features import Fbank
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
from torch import Tensor, nn

from kd_modules.attribution import (
    STEP_RULES,
    IntegratedInput,
    integrated_gradients,
    segment_attributions,
)
from kd_modules.dataio import audio_info, read_audio

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "librispeech_subset"
SAMPLE_RATE = 16000
SPEAKERS = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of .flac clips")
    parser.add_argument("--clips", type=int, default=8, help="utterances in the batch")
    parser.add_argument("--crop_s", type=float, default=3.0, help="crop of each clip (seconds)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rule", default="riemann_right", choices=STEP_RULES)
    parser.add_argument("--repeats", type=int, default=15, help="interleaved timed rounds")
    parser.add_argument("--chunk_size", type=int, default=None, help="steps per chunk")
    parser.add_argument("--channels", type=int, default=256, help="ECAPA channels (last layer: 3x)")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def load_feats(folder: Path, clips: int, crop_s: float, device: str) -> Tensor:
    """(clips, T, 80) mean-normalised fbank of the first clips at least crop_s long."""
    samples = round(crop_s * SAMPLE_RATE)
    paths = [p for p in sorted(folder.rglob("*.flac")) if audio_info(p).duration >= crop_s]
    if len(paths) < clips:
        raise SystemExit(f"{folder}: only {len(paths)} clips of >= {crop_s} s, need {clips}")
    wavs = torch.stack([read_audio(p, SAMPLE_RATE)[:samples] for p in paths[:clips]])
    feats = Fbank(n_mels=80)(wavs)
    return (feats - feats.mean(1, keepdim=True)).to(device)


def make_teacher(channels: int, device: str) -> nn.Module:
    """A random-weight ECAPA-TDNN (embedding 192), frozen, in eval mode."""
    torch.manual_seed(0)
    model = ECAPA_TDNN(
        80, channels=[channels] * 4 + [3 * channels], attention_channels=64, lin_neurons=192
    )
    return model.to(device).eval().requires_grad_(False)


def score_forward(model: nn.Module, prototypes: Tensor, targets: Tensor) -> Callable:
    """F (N, T, F) -> (N,): cosine with each clip's target prototype; rows are step-major, so
    row k·B + b is clip b (both ours and Captum expand that way)."""

    def forward(x: Tensor) -> Tensor:
        rows = targets.repeat(x.shape[0] // targets.shape[0])
        return nn.functional.cosine_similarity(model(x).squeeze(1), prototypes[rows], dim=-1)

    return forward


def timed(fn: Callable[[], Tensor], device: str) -> tuple[float, Tensor]:
    """Wall seconds of fn() (CUDA synchronised) and its result."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def relative_difference(ours: Tensor, reference: Tensor) -> float:
    """max |ours − reference| / max |reference|."""
    return ((ours - reference).abs().max() / reference.abs().max()).item()


def compare_with_captum(args, forward: Callable, feats: Tensor) -> list[tuple[str, float, str]]:
    """(row name, median seconds per utterance, note) for ours and Captum, interleaved."""
    captum = IntegratedGradients(forward)
    batch = feats.shape[0]
    chunks = [None] + ([args.chunk_size] if args.chunk_size else [])
    rows = []
    for chunk in chunks:
        internal = None if chunk is None else chunk * batch
        variants = {
            "ours": lambda c=chunk: (
                integrated_gradients(
                    forward, feats, None, args.steps, args.rule, c, completeness=False
                ).attributions
            ),
            "ours + gap": lambda c=chunk: (
                integrated_gradients(forward, feats, None, args.steps, args.rule, c).attributions
            ),
            "captum": lambda i=internal: captum.attribute(
                feats, baselines=0.0, n_steps=args.steps, method=args.rule, internal_batch_size=i
            ),
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        results = {name: fn() for name, fn in variants.items()}  # warm-up
        for _ in range(args.repeats):
            for name, fn in variants.items():
                seconds, results[name] = timed(fn, args.device)
                times[name].append(seconds / batch)
        reference = results["captum"]
        if args.rule == "riemann_trapezoid":  # Captum's trapezoid weights sum to (m − 1)/m
            reference = reference * args.steps / (args.steps - 1)
        diff = relative_difference(results["ours"], reference)
        label = "all steps" if chunk is None else f"chunk {chunk} steps"
        medians = {name: statistics.median(ts) for name, ts in times.items()}
        ratio = medians["ours"] / medians["captum"]
        rounds = sorted(o / c for o, c in zip(times["ours"], times["captum"]))
        middle = statistics.median(rounds)
        spread = f"per round median {middle:.2f}x, {rounds[0]:.2f}-{rounds[-1]:.2f}x"
        rows.append((f"ours, {label}", medians["ours"], f"ours/captum {ratio:.2f}x ({spread})"))
        ratio = medians["ours + gap"] / medians["captum"]
        rows.append(
            (
                f"ours + completeness gap, {label}",
                medians["ours + gap"],
                f"ours/captum {ratio:.2f}x (+ one forward of the end points)",
            )
        )
        rows.append((f"captum, {label}", medians["captum"], f"max rel diff {diff:.1e}"))
    return rows


def time_segments(args, model: nn.Module, prototypes: Tensor, feats: Tensor, targets: Tensor):
    """(row name, median seconds per utterance, note) of segment_attributions per duration."""
    crop = feats[:, :301]  # 3 s at a 10 ms hop

    def forward(x: Tensor, rows: Tensor) -> Tensor:
        embeddings = model(x).squeeze(1)
        return nn.functional.cosine_similarity(embeddings, prototypes[targets[rows]], dim=-1)

    lens = torch.ones(crop.shape[0], device=crop.device)
    integrated = IntegratedInput(steps=args.steps, rule=args.rule, chunk_size=args.chunk_size)
    rows = []
    for duration, frames in zip(integrated.durations_s, integrated.segment_frames()):
        run = partial(
            segment_attributions,
            forward,
            crop,
            lens,
            frames,
            args.steps,
            args.rule,
            args.chunk_size,
        )
        run()
        times = [timed(run, args.device)[0] / crop.shape[0] for _ in range(args.repeats)]
        note = f"{frames}-frame segments of {crop.shape[1]} frames"
        rows.append((f"segments {duration:g} s", statistics.median(times), note))
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    feats = load_feats(args.data, args.clips, args.crop_s, args.device)
    model = make_teacher(args.channels, args.device)
    torch.manual_seed(1)
    prototypes = nn.functional.normalize(torch.randn(SPEAKERS, 192), dim=-1).to(args.device)
    targets = torch.arange(args.clips, device=args.device) % SPEAKERS
    forward = score_forward(model, prototypes, targets)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"teacher: ECAPA-TDNN, RANDOM weights, {params / 1e6:.2f} M parameters, eval, frozen; "
        f"F = cosine to a random speaker prototype"
    )
    print(
        f"input: {args.clips} LibriSpeech clips x {args.crop_s:g} s, fbank {tuple(feats.shape)}; "
        f"steps {args.steps}, rule {args.rule}, baseline 0, repeats {args.repeats}; "
        f"device {args.device}, torch threads {torch.get_num_threads()}"
    )
    rows = compare_with_captum(args, forward, feats)
    if args.crop_s >= 3.0:
        rows += time_segments(args, model, prototypes, feats, targets)
    print(f"\n{'variant':<44} {'ms / utterance':>15}  note")
    for name, seconds, note in rows:
        print(f"{name:<44} {seconds * 1000:>15.1f}  {note}")


if __name__ == "__main__":
    main()
