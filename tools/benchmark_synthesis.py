#!/usr/bin/env python3
"""Synthesised samples per second of DeepInversion, CMI and FRAMI, side by side on one teacher.

    python tools/benchmark_synthesis.py --device cuda --batch_size 64 --frames 300 --steps 50
    python tools/benchmark_synthesis.py --n_classes 10 \
        --teacher_folder exp/fsdd/fold1/teacher/xvector_large/none/seed1

Without ``--teacher_folder`` the teacher is the recipe's ``hparams/teacher/xvector_large.yaml``
freshly initialised (inversion costs the same whatever the weights). Every synthesiser runs the
same batches (size, frames, steps) after one warm-up batch; the goal is FRAMI >= 0.6x
DeepInversion's samples per second. This is a benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from hyperpyyaml import load_hyperpyyaml

from kd_modules.synthesis import CMI, FRAMI, DeepInversion
from kd_modules.teacher import Teacher

ROOT = Path(__file__).resolve().parents[1]
TEACHER_YAML = ROOT / "recipes/sound_classification/hparams/teacher/xvector_large.yaml"


def build_teacher(args) -> torch.nn.Module:
    """The trained teacher of ``--teacher_folder``, else the recipe's architecture, untrained."""
    if args.teacher_folder:
        return Teacher.from_experiment(args.teacher_folder, max_key="accuracy").model
    text = f"n_mels: {args.n_mels}\nn_classes: {args.n_classes}\n" + TEACHER_YAML.read_text()
    return load_hyperpyyaml(text)["model"]


def samples_per_second(synth, args) -> float:
    """Samples per second over ``--batches`` batches, after a warm-up batch."""
    targets = torch.arange(args.batch_size) % args.n_classes
    synth.synthesize(targets, args.frames)  # warm-up: allocations, cuDNN autotuning, the head
    if synth.device.type == "cuda":
        torch.cuda.synchronize(synth.device)
    start = time.perf_counter()
    for _ in range(args.batches):
        synth.synthesize(targets, args.frames)  # returns a CPU tensor: synchronised
    return args.batches * args.batch_size / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher_folder", help="a trained teacher's experiment folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--parameterization", default="direct", choices=("direct", "generator"))
    parser.add_argument("--n_mels", type=int, default=40)
    parser.add_argument("--n_classes", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batches", type=int, default=2)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    teacher = build_teacher(args)
    common = {
        "steps": args.steps,
        "device": args.device,
        "precision": args.precision,
        "parameterization": args.parameterization,
    }
    rates = {}
    variants = {
        "deepinversion": (DeepInversion, {}),
        "cmi": (CMI, {}),
        "frami": (FRAMI, {}),
        "frami, fused views": (FRAMI, {"fuse_views": True}),
    }
    for name, (cls, options) in variants.items():
        synth = cls(teacher, args.n_mels, args.n_classes, **common, **options)
        rates[name] = samples_per_second(synth, args)
    device = torch.cuda.get_device_name(args.device) if "cuda" in args.device else "cpu"
    print(
        f"teacher {'trained' if args.teacher_folder else 'xvector_large (untrained)'}, "
        f"{sum(p.numel() for p in teacher.parameters()) / 1e6:.2f}M parameters; {device}, "
        f"{torch.get_num_threads()} threads; batch {args.batch_size} x {args.frames} frames x "
        f"{args.n_mels} mels, {args.steps} steps, {args.batches} timed batches, "
        f"{args.precision}, {args.parameterization}"
    )
    print("| synthesiser | samples/s | x DeepInversion |\n|---|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.2f} | {rate / rates['deepinversion']:.2f} |")


if __name__ == "__main__":
    main()
