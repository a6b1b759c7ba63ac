#!/usr/bin/env python3
"""Benchmark: epoch time of a student alone, KD with the live teacher, and KD from the cache.

Every variant trains the same student architecture on the same manifests with the same
augmentation (SpecAugment-style masks by default, ``--augment False`` for none); the cache
variants replay the teacher's stored views (kd_modules.replay), so no teacher runs. Variants are
interleaved epoch by epoch (alone, KD live, KD cache, SP live, SP cache, ...) so machine noise
hits them alike; the first round is a warm-up and is discarded. Prints each variant's median
epoch time and its ratio to the student alone. Goals: KD from the cache <= 1.10x, SP <= 1.15x.

``--recipe`` picks the recipe folder: its train.py (``dataio_prepare``, ``make_brain``), its
hparams/ (``--student``, ``--methods``) and its label count (sound classification: ``n_classes``
from the dataset's labels.json; audio tagging: ``n_outputs``, the fine and coarse columns of
labels.json). ``--extra_args`` are HyperPyYAML overrides for every variant, as run.sh's; give the
ones the teacher was trained with (e.g. ``--teacher_width 32``).

    cd recipes/sound_classification && python ../../tools/benchmark_kd.py \
        --data_folder data/urbansound8k/fold1 --methods kd sp fitnets \
        --teacher_folder exp/urbansound8k/fold1/teacher/xvector_large/none/seed1
    cd recipes/audio_tagging && python ../../tools/benchmark_kd.py --recipe audio_tagging \
        --data_folder data/sonyc_ust --methods kd sp iusp \
        --teacher_folder exp/sonyc_ust/teacher/cnn10/none/seed1
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch

from kd_modules.experiment import load_teacher_side, run_cache_stage
from kd_modules.hparams import load_composed, parse_recipe_arguments

REPO = Path(__file__).resolve().parents[1]
DEFAULT_STUDENT = {"sound_classification": "xvector_small", "audio_tagging": "cnn_medium"}


def label_args(recipe: str, data_folder: str) -> list[str]:
    """The recipe's output-size override, as its run.sh passes it: ``--n_classes`` (sound
    classification: labels.json one level above the fold) or ``--n_outputs`` (audio tagging:
    fine + coarse columns of the data folder's labels.json)."""
    if recipe == "audio_tagging":
        labels = json.loads((Path(data_folder) / "labels.json").read_text())
        return ["--n_outputs", str(len(labels["fine"]) + len(labels["coarse"]))]
    labels = json.loads((Path(data_folder).parent / "labels.json").read_text())
    return ["--n_classes", str(len(labels))]


def load_train_module(recipe_dir: Path) -> ModuleType:
    """The recipe's train.py, imported by path under a unique name (both recipes have one), with
    the recipe folder on sys.path while it imports its siblings; it must define
    ``dataio_prepare`` and ``make_brain``."""
    name = f"{recipe_dir.name}_train"
    spec = importlib.util.spec_from_file_location(name, recipe_dir / "train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # registered, so dataloader workers can unpickle its items
    sys.path.insert(0, str(recipe_dir))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(recipe_dir))
    return module


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="sound_classification", choices=list(DEFAULT_STUDENT))
    parser.add_argument("--data_folder", required=True, help="folder with train/valid/test.json")
    parser.add_argument("--teacher_folder", required=True, help="a trained teacher (stage 2)")
    parser.add_argument("--student", help="hparams/student/<name>.yaml (default: per recipe)")
    parser.add_argument("--methods", nargs="+", default=["kd"], help="hparams/kd/<method>.yaml")
    parser.add_argument("--augment", default="True", help="SpecAugment-style masks (True/False)")
    parser.add_argument("--cache_views", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4, help="measured epochs per variant")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", help="fp32 | fp16 | bf16 (AMP on CUDA)")
    parser.add_argument("--extra_args", default="", help='overrides, e.g. "--teacher_width 32"')
    args = parser.parse_args(argv)
    args.student = args.student or DEFAULT_STUDENT[args.recipe]
    return args


def common_args(args, work: Path) -> list[str]:
    """The arguments every variant and the cache stage share (run.sh's run arguments)."""
    return [
        "--data_folder", args.data_folder, "--exp_root", str(work),
        *label_args(args.recipe, args.data_folder), "--augment", args.augment,
        "--cache_views", str(args.cache_views), *shlex.split(args.extra_args),
    ]  # fmt: skip


def make_variant(args, train: ModuleType, method: str, use_cache: bool, work: Path):
    """A (brain, train set, loader options, YAML files) tuple for one variant; the brain has no
    checkpointer (no disk I/O)."""
    recipe = REPO / "recipes" / args.recipe
    files = [
        recipe / "hparams" / "common.yaml",
        recipe / "hparams" / "student" / f"{args.student}.yaml",
        recipe / "hparams" / "kd" / f"{method}.yaml",
    ]
    argv = [*map(str, files), *common_args(args, work), "--output_folder",
            str(work / f"{method}-{use_cache}"), "--batch_size", str(args.batch_size),
            "--num_workers", str(args.num_workers)]  # fmt: skip
    if method != "none":
        argv += ["--teacher_folder", args.teacher_folder, "--use_teacher_cache", str(use_cache)]
    _, _, overrides = parse_recipe_arguments(argv)
    hparams = load_composed(files, overrides)
    teacher, cache = load_teacher_side(hparams)
    train_set = train.dataio_prepare(hparams)["train"]
    if cache is not None:
        hparams["view_replay"].attach(train_set, cache)
    run_opts = {"device": args.device, "noprogressbar": True, "precision": args.precision}
    brain = train.make_brain(hparams, run_opts, teacher, cache, checkpoints=False)
    return brain, train_set, hparams["train_dataloader_options"], files


def build_cache(args, train: ModuleType, files: list[Path], work: Path) -> float:
    """Stage 3 for one method, as run.sh runs it; returns its wall time in seconds."""
    start = time.perf_counter()
    run_cache_stage(
        [*map(str, files), *common_args(args, work), "--output_folder", str(work / "probe"),
         "--teacher_folder", args.teacher_folder, "--device", args.device],
        train.dataio_prepare,
    )  # fmt: skip
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    train = load_train_module(REPO / "recipes" / args.recipe)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        variants = {"student alone": make_variant(args, train, "none", False, work)}
        build_s = {}
        for method in args.methods:
            variants[f"{method}, live teacher"] = live = make_variant(
                args, train, method, False, work
            )
            build_s[method] = build_cache(args, train, live[3], work)
            variants[f"{method}, teacher cache"] = make_variant(args, train, method, True, work)
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
    print(f"\n{args.recipe}, student {args.student}: epoch time, median of {args.rounds} "
          f"interleaved epochs ({len(train_set)} clips, "
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
