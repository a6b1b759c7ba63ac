#!/usr/bin/env python3
"""Benchmark: epoch time of a student alone, KD with the live teacher, and KD from the cache.

All three train the same student architecture on the same manifests, interleaved epoch by epoch
(alone, live, cache, alone, live, cache, ...) so machine noise hits them alike; the first round is
a warm-up and is discarded. Prints the median epoch time of each and its ratio to the student
alone. The goal of the teacher cache: KD-from-cache <= 1.10x the student alone.

    cd recipes/sound_classification && python ../../tools/benchmark_kd.py \
        --data_folder data/fsdd/fold1 \
        --teacher_folder exp/fsdd/fold1/teacher/xvector_large/none/seed1
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

from cache_teacher import main as build_cache  # noqa: E402
from train import dataio_prepare, make_brain  # noqa: E402

from kd_modules.experiment import load_teacher_side  # noqa: E402
from kd_modules.hparams import load_composed  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_folder", required=True, help="folder with train/valid/test.json")
    parser.add_argument("--teacher_folder", required=True, help="a trained teacher (stage 2)")
    parser.add_argument("--student", default="xvector_small")
    parser.add_argument("--method", default="kd", help="hparams/kd/<method>.yaml")
    parser.add_argument("--rounds", type=int, default=4, help="measured epochs per variant")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", help="fp32 | fp16 | bf16 (AMP on CUDA)")
    return parser.parse_args(argv)


def make_variant(args, method: str, use_cache: bool, work: Path, n_classes: int):
    """A (brain, train set) pair for one variant; the brain has no checkpointer (no disk I/O)."""
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
    }
    if method != "none":
        overrides.update(teacher_folder=args.teacher_folder, use_teacher_cache=use_cache)
    hparams = load_composed(files, overrides)
    teacher, cache = load_teacher_side(hparams)
    run_opts = {"device": args.device, "noprogressbar": True, "precision": args.precision}
    brain = make_brain(hparams, run_opts, teacher, cache, checkpoints=False)
    return brain, dataio_prepare(hparams)["train"], hparams["train_dataloader_options"], files


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    n_classes = len(json.loads((Path(args.data_folder).parent / "labels.json").read_text()))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        variants = {
            "student alone": make_variant(args, "none", False, work, n_classes),
            "KD, live teacher": make_variant(args, args.method, False, work, n_classes),
        }
        _, _, _, files = variants["KD, live teacher"]
        start = time.perf_counter()
        build_cache([*map(str, files), "--data_folder", args.data_folder, "--output_folder",
                     str(work / "probe"), "--exp_root", str(work), "--n_classes", str(n_classes),
                     "--teacher_folder", args.teacher_folder, "--device", args.device])  # fmt: skip
        cache_build_s = time.perf_counter() - start
        variants["KD, teacher cache"] = make_variant(args, args.method, True, work, n_classes)
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
          f"method {args.method}):")  # fmt: skip
    print("| variant | median epoch s | ratio to student alone | all epochs s |\n|---|---|---|---|")
    result = {}
    for name, values in times.items():
        median = statistics.median(values)
        result[name] = median / base
        spread = ", ".join(f"{v:.2f}" for v in values)
        print(f"| {name} | {median:.2f} | {median / base:.2f}x | {spread} |")
    print(f"\nBuilding the teacher cache once took {cache_build_s:.1f} s.")
    return result


if __name__ == "__main__":
    main()
