#!/usr/bin/env python3
"""Benchmark the on-disk teacher cache at scale: reader memory and build throughput.

1. Synthetic stores of ``--sizes`` utterances (default 15,000 and 150,000; each: 527 logits, a
   256-dim embedding and an 80 x 300 half-precision map, about 48 kB, so 0.7 and 7 GB) are
   written with the library's shard writer; a fresh process then reads ``--batches`` random
   batches of ``--batch_size`` through a DataLoader (``--workers`` worker processes) and reports
   its peak RSS (its own and its workers'). Goal: the same for both sizes.
2. The recipe's teacher (x-vector, 1.1 M parameters) caches real clips batched (same-length
   views grouped) and one clip at a time; clips per second of each, median of ``--rounds``.

    python tools/benchmark_cache_store.py --root /tmp/cache_bench
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from kd_modules.cache import ShardWriter, TeacherCache
from kd_modules.cache_build import build_teacher_cache

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "sound_classification"
SHARED_DATA = REPO.parent / "shared" / "data"  # real datasets beside the checkout


def write_synthetic_store(folder: Path, size: int, shard_size: int) -> float:
    """A finished store of ``size`` utterances of random outputs; returns its size in GB."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(folder, 0, shard_size, "float16", shard_seconds=float("inf"))  # by count
    generator = torch.Generator().manual_seed(0)
    block = torch.randn(64, 300, 80, generator=generator)  # reused: writing, not randomness
    for index in range(size):
        outputs = {
            "logits": torch.randn(527, generator=generator),
            "embedding": torch.randn(256, generator=generator),
            "map": block[index % 64],
        }
        writer.add(f"utt{index:07d}", [(outputs, torch.zeros(1, dtype=torch.long))])
    writer.flush()
    meta = {"names": ["embedding", "logits", "map"], "n_classes": 527, "n_views": 1, "topk": 0}
    (folder / "meta.json").write_text(json.dumps(meta))
    return sum(p.stat().st_size for p in folder.glob("shard-*")) / 1e9


def read_random_batches(folder: str, batches: int, batch_size: int, workers: int) -> dict:
    """Peak RSS (MB) of this process and of its DataLoader workers after random reads."""
    cache = TeacherCache(folder)
    ids = list(cache.index)

    class Items(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return batches * batch_size

        def __getitem__(self, index: int) -> dict:
            utt = ids[torch.randint(len(ids), (1,)).item()]
            return cache.read(utt)[0]

    loader = torch.utils.data.DataLoader(Items(), batch_size=batch_size, num_workers=workers)
    start = time.perf_counter()
    for _ in loader:
        pass
    elapsed = time.perf_counter() - start
    kb = 1024
    return {
        "utterances": len(ids),
        "batches_per_s": batches / elapsed,
        "peak_rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kb,
        "peak_rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / kb,
    }


def build_throughput(rounds: int, clips: int) -> dict:
    """Clips per second of a cache build, batched (16) and one clip at a time, on real audio."""
    from kd_modules.augment import AugmentPolicy
    from kd_modules.dataio import read_audio
    from kd_modules.hparams import load_composed
    from kd_modules.replay import ViewReplay
    from kd_modules.teacher import Teacher

    hp = RECIPE / "hparams"
    hparams = load_composed(
        [hp / "common.yaml", hp / "teacher/xvector_large.yaml", hp / "kd/none.yaml"],
        {"data_folder": "-", "output_folder": "-", "n_classes": 10},
    )
    teacher = Teacher(hparams["model"])
    fbank, normalize = hparams["compute_features"], hparams["normalize"]
    policy = AugmentPolicy(random_crop=True, crop_samples=32000, spec_masks=True)
    replay = ViewReplay(policy, lambda w, lens: normalize(fbank(w), lens), seed=1, n_views=1)
    audio = sorted((SHARED_DATA / "urbansound8k" / "UrbanSound8K" / "audio").rglob("*.flac"))
    signals = {p.stem: read_audio(p, 16000) for p in audio[:clips]}
    results = {}
    for batch_size in (16, 1):
        times = []
        for _ in range(rounds):
            folder = Path(f"/tmp/bench_build_{batch_size}")
            shutil.rmtree(folder, ignore_errors=True)
            start = time.perf_counter()
            build_teacher_cache(
                teacher,
                list(signals),
                signals.__getitem__,
                replay.features,
                replay.make_view,
                folder,
                {},
                batch_size=batch_size,
            )
            times.append(time.perf_counter() - start)
        results[batch_size] = len(signals) / statistics.median(times)
    return {
        "batched_clips_per_s": results[16],
        "single_clips_per_s": results[1],
        "speed_up": results[16] / results[1],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/tmp/cache_bench")
    parser.add_argument("--sizes", type=int, nargs="+", default=[15000, 150000])
    parser.add_argument("--shard_size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clips", type=int, default=96)
    parser.add_argument("--read_only", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.read_only:  # the fresh reader process
        print(
            json.dumps(
                read_random_batches(args.read_only, args.batches, args.batch_size, args.workers)
            )
        )
        return
    print("| store | utterances | GB on disk | batches/s | peak RSS main | peak RSS worker |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        folder = Path(args.root) / f"store_{size}"
        shutil.rmtree(folder, ignore_errors=True)
        gigabytes = write_synthetic_store(folder, size, args.shard_size)
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--read_only",
                str(folder),
                "--batches",
                str(args.batches),
                "--batch_size",
                str(args.batch_size),
                "--workers",
                str(args.workers),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        stats = json.loads(out.strip().splitlines()[-1])
        print(
            f"| {folder.name} | {stats['utterances']} | {gigabytes:.2f} | "
            f"{stats['batches_per_s']:.1f} | {stats['peak_rss_main_mb']:.0f} MB | "
            f"{stats['peak_rss_worker_mb']:.0f} MB |",
            flush=True,
        )
        shutil.rmtree(folder)
    build = build_throughput(args.rounds, args.clips)
    print(
        f"\nBuild on {args.clips} real UrbanSound8K clips (2 s crops, x-vector teacher): "
        f"batched {build['batched_clips_per_s']:.1f} clips/s, one at a time "
        f"{build['single_clips_per_s']:.1f} clips/s ({build['speed_up']:.2f}x)"
    )


if __name__ == "__main__":
    main()
