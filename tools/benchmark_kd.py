#!/usr/bin/env python3
"""Benchmark: epoch time of a student alone, KD with the live teacher, and KD from the cache.

Every variant trains the same student architecture on the same manifests with the same
augmentation (``--augment``, ``--cache_views``: per recipe, RECIPE_DEFAULTS); the cache variants
replay the teacher's stored views (kd_modules.replay), so no teacher runs. Variants are
interleaved epoch by epoch (alone, KD live, KD cache, SP live, SP cache, ...) so machine noise
hits them alike; the first round is a warm-up and is discarded. Prints each variant's median
epoch time and its ratios to the student alone and to logit KD (live and cached) when ``kd`` is
among ``--methods``. Goals: KD from the cache <= 1.10x the student alone, SP <= 1.15x; IML-KD
from the cache <= 1.25x logit KD.

``--recipe`` picks the recipe: its train.py (``recipes.<recipe>.train``: ``dataio_prepare``,
``make_brain``), its hparams/ (``--student``, ``--methods``) and its output size, as run.sh
passes it: ``outputs`` of stage 1's data_info.json as ``n_classes`` (sound classification, one
level above the fold), ``n_outputs`` (audio tagging) or ``n_speakers`` (speaker verification),
and ``teacher_embedding_dim`` from the top-level ``embedding_dim`` of the teacher's
hyperparams.yaml. ``--extra_args`` are HyperPyYAML overrides for every variant, as run.sh's;
give the ones the teacher was trained with (e.g. ``--teacher_width 32``).

    export PYTHONPATH=$(pwd)  # the repository root: the recipes import as recipes.<name>
    cd recipes/sound_classification && python ../../tools/benchmark_kd.py \
        --data_folder data/urbansound8k/fold1 --methods kd sp fitnets \
        --teacher_folder exp/urbansound8k/fold1/teacher/xvector_large/none/seed1
    cd recipes/audio_tagging && python ../../tools/benchmark_kd.py --recipe audio_tagging \
        --data_folder data/sonyc_ust --methods kd sp iusp \
        --teacher_folder exp/sonyc_ust/teacher/cnn10/none/seed1
    cd recipes/speaker_verification && python ../../tools/benchmark_kd.py \
        --recipe speaker_verification --data_folder data/librispeech --methods kd imlkd \
        --teacher_folder exp/librispeech/teacher/ecapa_c1024/none/seed1
"""

from __future__ import annotations

import argparse
import importlib
import logging
import shlex
import statistics
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch

from kd_modules.data_info import read_data_info
from kd_modules.hparams import load_composed, parse_recipe_arguments
from kd_modules.stages.cache import run_cache_stage
from kd_modules.stages.status import yaml_value
from kd_modules.teacher import load_teacher_side

REPO = Path(__file__).resolve().parents[1]
# What each recipe's benchmark runs unless told otherwise; None leaves the recipe YAML's value.
RECIPE_DEFAULTS = {
    "sound_classification": {
        "student": "xvector_small",
        "methods": ["kd"],
        "augment": "True",
        "cache_views": 8,
    },
    "audio_tagging": {
        "student": "cnn_medium",
        "methods": ["kd"],
        "augment": "True",
        "cache_views": 8,
    },
    "speaker_verification": {
        "student": "ecapa_c256",
        "methods": ["kd", "imlkd"],
        "augment": None,
        "cache_views": None,
    },
}
RATIO_REFERENCES = ("student alone", "kd, live teacher", "kd, teacher cache")


# The YAML key each recipe's model takes its output size from (run.sh's run arguments).
OUTPUT_KEYS = {
    "sound_classification": "n_classes",
    "audio_tagging": "n_outputs",
    "speaker_verification": "n_speakers",
}


def label_args(recipe: str, data_folder: str) -> list[str]:
    """The recipe's output-size override, as its run.sh passes it: ``outputs`` of stage 1's
    data_info.json (sound classification: the one above the fold folder)."""
    folder = Path(data_folder)
    info = read_data_info(folder.parent if recipe == "sound_classification" else folder)
    return [f"--{OUTPUT_KEYS[recipe]}", str(info["outputs"])]


def teacher_dim_args(recipe: str, teacher_folder: str) -> list[str]:
    """Speaker verification's ``--teacher_embedding_dim`` (the teacher side of the embedding and
    multi-level KD losses), read as run.sh reads it: the top-level ``embedding_dim`` of the
    teacher's YAML, here the hyperparams.yaml its run folder keeps; nothing for other recipes."""
    if recipe != "speaker_verification":
        return []
    path = Path(teacher_folder) / "hyperparams.yaml"
    found = yaml_value(path, "embedding_dim")
    if not isinstance(found, int):
        raise SystemExit(f"{path}: no top-level 'embedding_dim: <int>' (the teacher's size)")
    return ["--teacher_embedding_dim", str(found)]


def train_module(recipe: str) -> ModuleType:
    """The recipe's train.py (``recipes.<recipe>.train``); it defines ``dataio_prepare`` and
    ``make_brain``."""
    return importlib.import_module(f"recipes.{recipe}.train")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="sound_classification", choices=list(RECIPE_DEFAULTS))
    parser.add_argument("--data_folder", required=True, help="folder with train/valid/test.json")
    parser.add_argument("--teacher_folder", required=True, help="a trained teacher (stage 2)")
    parser.add_argument("--student", help="hparams/student/<name>.yaml (default: per recipe)")
    parser.add_argument("--methods", nargs="+", help="hparams/kd/<m>.yaml (default: per recipe)")
    parser.add_argument("--augment", help="SpecAugment masks, True/False (default: per recipe)")
    parser.add_argument("--cache_views", type=int, help="views per clip (default: per recipe)")
    parser.add_argument("--rounds", type=int, default=4, help="measured epochs per variant")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", help="fp32 | fp16 | bf16 (AMP on CUDA)")
    parser.add_argument("--extra_args", default="", help='overrides, e.g. "--teacher_width 32"')
    args = parser.parse_args(argv)
    for key, default in RECIPE_DEFAULTS[args.recipe].items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    return args


def common_args(args, work: Path) -> list[str]:
    """The arguments every variant and the cache stage share (run.sh's run arguments);
    ``--augment`` / ``--cache_views`` only when set (None: the recipe YAML's value)."""
    set_here = [
        arg
        for key in ("augment", "cache_views")
        if getattr(args, key) is not None
        for arg in (f"--{key}", str(getattr(args, key)))
    ]
    return [
        "--data_folder",
        args.data_folder,
        "--exp_root",
        str(work),
        *label_args(args.recipe, args.data_folder),
        *teacher_dim_args(args.recipe, args.teacher_folder),
        *set_here,
        *shlex.split(args.extra_args),
    ]


def make_variant(args, train: ModuleType, method: str, use_cache: bool, work: Path):
    """A (brain, train set, loader options, YAML files) tuple for one variant; the brain has no
    checkpointer (no disk I/O)."""
    recipe = REPO / "recipes" / args.recipe
    files = [
        recipe / "hparams" / "common.yaml",
        recipe / "hparams" / "student" / f"{args.student}.yaml",
        recipe / "hparams" / "kd" / f"{method}.yaml",
    ]
    argv = [
        *map(str, files),
        *common_args(args, work),
        "--output_folder",
        str(work / f"{method}-{use_cache}"),
        "--batch_size",
        str(args.batch_size),
        "--num_workers",
        str(args.num_workers),
    ]
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
        [
            *map(str, files),
            *common_args(args, work),
            "--output_folder",
            str(work / "probe"),
            "--teacher_folder",
            args.teacher_folder,
            "--device",
            args.device,
        ],
        train.dataio_prepare,
    )
    return time.perf_counter() - start


def ratio_table(times: dict[str, list[float]]) -> list[str]:
    """Markdown lines: each variant's median epoch time (seconds), its ratios to every variant of
    RATIO_REFERENCES that was measured (the student alone; logit KD live and from the cache) and
    its measured epochs."""
    medians = {name: statistics.median(values) for name, values in times.items()}
    refs = [name for name in RATIO_REFERENCES if name in medians]
    header = "".join(f" ratio to {ref} |" for ref in refs)
    lines = [f"| variant | median epoch s |{header} all epochs s |", "|---" * (len(refs) + 3) + "|"]
    for name, values in times.items():
        ratios = "".join(f" {medians[name] / medians[ref]:.2f}x |" for ref in refs)
        spread = ", ".join(f"{v:.2f}" for v in values)
        lines.append(f"| {name} | {medians[name]:.2f} |{ratios} {spread} |")
    return lines


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    train = train_module(args.recipe)
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
    used = variants["student alone"][0].hparams  # the composed values, the recipe's defaults too
    print(
        f"\n{args.recipe}, student {args.student}: epoch time, median of {args.rounds} "
        f"interleaved epochs ({len(train_set)} clips, "
        f"batch {args.batch_size}, device {args.device}, precision {args.precision}, "
        f"augment {used.augment}, {used.cache_views} cached views):"
    )
    print("\n".join(ratio_table(times)))
    for method, seconds in build_s.items():
        print(f"Stage 3 for {method} ({used.cache_views} views per clip) took {seconds:.1f} s.")
    base = statistics.median(times["student alone"])
    return {name: statistics.median(values) / base for name, values in times.items()}


if __name__ == "__main__":
    main()
