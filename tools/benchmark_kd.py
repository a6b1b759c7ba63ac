#!/usr/bin/env python3
"""Benchmark: epoch time of a student alone, KD with the live teacher, and KD from the cache.

Every variant trains the same student architecture on the same manifests with the same
augmentation (SpecAugment-style masks by default, ``--augment False`` for none); the cache
variants replay the teacher's stored views (kd_modules.replay), so no teacher runs. Variants are
interleaved epoch by epoch (alone, KD live, KD cache, SP live, SP cache, ...) so machine noise
hits them alike; the first round is a warm-up and is discarded. Prints each variant's median
epoch time and its ratio to the student alone. Goals: KD from the cache <= 1.10x, SP <= 1.15x.

    cd recipes/sound_classification && python ../../tools/benchmark_kd.py \
        --data_folder data/urbansound8k/fold1 --methods kd sp fitnets \
        --teacher_folder exp/urbansound8k/fold1/teacher/xvector_large/none/seed1
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "sound_classification"
sys.path.insert(0, str(RECIPE))

from train import dataio_prepare, make_brain  # noqa: E402

from kd_modules.experiment import load_teacher_side, run_cache_stage  # noqa: E402
from kd_modules.hparams import load_composed  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_folder", required=True, help="folder with train/valid/test.json")
    parser.add_argument("--teacher_folder", required=True, help="a trained teacher (stage 2)")
    parser.add_argument("--student", default="xvector_small")
    parser.add_argument("--methods", nargs="+", default=["kd"], help="hparams/kd/<method>.yaml")
    parser.add_argument("--augment", default="True", help="SpecAugment-style masks (True/False)")
    parser.add_argument("--cache_views", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4, help="measured epochs per variant")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", help="fp32 | fp16 | bf16 (AMP on CUDA)")
    return parser.parse_args(argv)


def make_variant(args, method: str, use_cache: bool, work: Path, n_classes: int):
    """A (brain, train set, loader options, YAML files) tuple for one variant; the brain has no
    checkpointer (no disk I/O)."""
    files = [
        RECIPE / "hparams" / "common.yaml",
        RECIPE / "hparams" / "student" / f"{args.student}.yaml",
        RECIPE / "hparams" / "kd" / f"{method}.yaml",
    ]
    overrides = {
        "data_folder": args.data_folder,
        "output_folder": str(work / f"{method}-{use_cache}"),
        "exp_root": str(work),
        "n_classes": n_classes,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "augment": args.augment == "True",
        "cache_views": args.cache_views,
    }
    if method != "none":
        overrides.update(teacher_folder=args.teacher_folder, use_teacher_cache=use_cache)
    hparams = load_composed(files, overrides)
    teacher, cache = load_teacher_side(hparams)
    train_set = dataio_prepare(hparams)["train"]
    if cache is not None:
        hparams["view_replay"].attach(train_set, cache)
    run_opts = {"device": args.device, "noprogressbar": True, "precision": args.precision}
    brain = make_brain(hparams, run_opts, teacher, cache, checkpoints=False)
    return brain, train_set, hparams["train_dataloader_options"], files


def build_cache(args, files: list[Path], work: Path, n_classes: int) -> float:
    """Stage 3 for one method, as run.sh runs it; returns its wall time in seconds."""
    start = time.perf_counter()
    run_cache_stage(
        [*map(str, files), "--data_folder", args.data_folder, "--output_folder",
         str(work / "probe"), "--exp_root", str(work), "--n_classes", str(n_classes),
         "--teacher_folder", args.teacher_folder, "--device", args.device,
         "--augment", args.augment, "--cache_views", str(args.cache_views)],
        dataio_prepare,
    )  # fmt: skip
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    n_classes = len(json.loads((Path(args.data_folder).parent / "labels.json").read_text()))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        variants = {"student alone": make_variant(args, "none", False, work, n_classes)}
        build_s = {}
        for method in args.methods:
            variants[f"{method}, live teacher"] = live = make_variant(
                args, method, False, work, n_classes
            )
            build_s[method] = build_cache(args, live[3], work, n_classes)
            variants[f"{method}, teacher cache"] = make_variant(args, method, True, work, n_classes)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for epoch in range(1, args.rounds + 2):
            for name, (brain, train_set, loader_opts, _) in variants.items():
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                start = time.perf_counter()
                brain.fit(range(epoch, epoch + 1), train_set, train_loader_kwargs=loader_opts)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                if epoch > 1:  # the first round warms up (allocations, workers, caches)
                    times[name].append(time.perf_counter() - start)
    base = statistics.median(times["student alone"])
    print(f"\nEpoch time, median of {args.rounds} interleaved epochs ({len(train_set)} clips, "
          f"batch {args.batch_size}, device {args.device}, precision {args.precision}, "
          f"augment {args.augment}, {args.cache_views} cached views):")  # fmt: skip
    print("| variant | median epoch s | ratio to student alone | all epochs s |\n|---|---|---|---|")
    result = {}
    for name, values in times.items():
        median = statistics.median(values)
        result[name] = median / base
        spread = ", ".join(f"{v:.2f}" for v in values)
        print(f"| {name} | {median:.2f} | {median / base:.2f}x | {spread} |")
    for method, seconds in build_s.items():
        print(f"Stage 3 for {method} ({args.cache_views} views per clip) took {seconds:.1f} s.")
    return result


if __name__ == "__main__":
    main()
