"""The on-disk pool of synthetic samples: tensors plus one manifest, class-balanced, resumable.

Layout of a pool folder::

    samples/<id>.pt        one log-Mel tensor (T, F) per sample, written atomically
    parts/b<index>.json    the samples of one finished batch (written after its tensors)
    manifest.json          every sample: {id: {"path", "label_id", "frames"}} (merged at the end)

:func:`pool_plan` fixes every batch in advance (its targets, frame count and seed) from the pool's
keys, so the pool is the same whichever process writes which batch, and a killed synthesis resumes
at the first batch without a part file: nothing written before the kill is lost or redone. Under
DDP each rank synthesises the batches ``index % world_size == rank``; rank 0 merges the parts into
one manifest.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from kd_modules.dataio import write_json_atomic
from kd_modules.synthesis.base import Synthesizer

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class PoolBatch:
    """One synthesis batch of the plan: its index, target classes, frame count and seed."""

    index: int
    targets: tuple[int, ...]
    frames: int
    seed: int


def pool_plan(
    n_classes: int,
    samples_per_class: int,
    batch_size: int,
    min_frames: int,
    max_frames: int,
    seed: int = 1,
) -> list[PoolBatch]:
    """The batches of a class-balanced pool of ``n_classes × samples_per_class`` samples.

    Classes are dealt round-robin (0, 1, ..., C−1, 0, 1, ...) into batches of ``batch_size``, so
    every class has exactly ``samples_per_class`` samples and every batch mixes classes (as the
    BatchNorm statistics and the contrastive negatives need). Each batch draws its frame count
    uniformly from ``[min_frames, max_frames]`` (audio has variable duration) and its own seed,
    both from ``seed`` and its index only.
    """
    if not 1 <= min_frames <= max_frames:
        raise ValueError(f"need 1 <= min_frames <= max_frames, got {min_frames}, {max_frames}")
    if n_classes < 1 or samples_per_class < 1 or batch_size < 1:
        raise ValueError("n_classes, samples_per_class and batch_size must be >= 1")
    order = [label for _ in range(samples_per_class) for label in range(n_classes)]
    plan = []
    for index, start in enumerate(range(0, len(order), batch_size)):
        rng = random.Random(f"{seed}-{index}")
        frames = rng.randint(min_frames, max_frames)
        batch_seed = rng.randrange(2**31)
        plan.append(PoolBatch(index, tuple(order[start : start + batch_size]), frames, batch_seed))
    return plan


def _save_atomic(tensor: torch.Tensor, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(tensor.clone(), handle)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class SyntheticPool:
    """A pool folder (see the module docstring)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    @property
    def manifest_file(self) -> Path:
        return self.folder / MANIFEST

    def part_file(self, index: int) -> Path:
        return self.folder / "parts" / f"b{index:06d}.json"

    def started(self) -> bool:
        """True when anything was synthesised here (a manifest or a batch's part file)."""
        parts = self.folder / "parts"
        return self.manifest_file.is_file() or (parts.is_dir() and any(parts.iterdir()))

    def done(self, batch: PoolBatch) -> bool:
        """True when the batch's tensors and part file are on disk."""
        return self.part_file(batch.index).is_file()

    def write_batch(self, batch: PoolBatch, x: torch.Tensor) -> dict:
        """Store ``x`` (B, T, F) as the batch's samples, then its part file (atomic, in order)."""
        if x.shape[0] != len(batch.targets) or x.shape[1] != batch.frames:
            raise ValueError(f"batch {batch.index}: got {tuple(x.shape)}, planned "
                             f"{len(batch.targets)} x {batch.frames} frames")  # fmt: skip
        samples = self.folder / "samples"
        samples.mkdir(parents=True, exist_ok=True)
        entries = {}
        for i, (label, sample) in enumerate(zip(batch.targets, x)):
            sample_id = f"b{batch.index:06d}_{i:03d}"
            _save_atomic(sample.float().cpu(), samples / f"{sample_id}.pt")
            entries[sample_id] = {
                "path": f"samples/{sample_id}.pt", "label_id": int(label), "frames": batch.frames
            }  # fmt: skip
        write_json_atomic(self.part_file(batch.index), entries)
        return entries

    def merge(self, plan: list[PoolBatch]) -> dict:
        """Write ``manifest.json`` from the part files of every planned batch; return it."""
        missing = [batch.index for batch in plan if not self.done(batch)]
        if missing:
            raise RuntimeError(f"pool {self.folder}: {len(missing)} planned batches are not "
                               f"synthesised yet (first: {missing[:5]})")  # fmt: skip
        manifest = {}
        for batch in plan:
            manifest.update(json.loads(self.part_file(batch.index).read_text()))
        write_json_atomic(self.manifest_file, manifest)
        return manifest

    def complete(self, plan: list[PoolBatch]) -> bool:
        """True when the manifest exists and holds every planned sample."""
        if not self.manifest_file.is_file():
            return False
        return len(json.loads(self.manifest_file.read_text())) == sum(
            len(batch.targets) for batch in plan
        )

    def manifest(self) -> dict:
        return json.loads(self.manifest_file.read_text())

    def load(self, sample_id: str) -> torch.Tensor:
        """The stored tensor (T, F) of one sample."""
        path = self.folder / self.manifest()[sample_id]["path"]
        return torch.load(path, map_location="cpu")


def synthesize_pool(
    synthesizer: Synthesizer,
    pool: SyntheticPool,
    plan: list[PoolBatch],
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    on_batch: Callable[[PoolBatch], None] | None = None,
) -> int:
    """Synthesise this rank's unfinished batches of ``plan`` into ``pool``; return how many.

    Each batch runs under its own seed (torch's RNG is forked, so the caller's is untouched): a
    DeepInversion batch depends on its seed only, whichever batches ran before it; contrastive
    synthesisers also carry their projection head and memory bank over batches (both start
    afresh in a resumed session). The progress
    bar counts samples and shows samples per second. ``on_batch`` is called after each batch is
    written (tests use it to simulate a kill).
    """
    mine = [batch for batch in plan if batch.index % world_size == rank]
    todo = [batch for batch in mine if not pool.done(batch)]
    total = sum(len(batch.targets) for batch in mine)
    initial = total - sum(len(batch.targets) for batch in todo)
    bar = tqdm(total=total, initial=initial, unit="sample", dynamic_ncols=True,
               desc=f"{synthesizer.name} pool (rank {rank})", disable=not progress)  # fmt: skip
    with bar:
        for batch in todo:
            device = synthesizer.device
            devices = [device.index or 0] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(batch.seed)
                x = synthesizer.synthesize(torch.tensor(batch.targets), batch.frames)
            pool.write_batch(batch, x)
            bar.update(len(batch.targets))
            if on_batch is not None:
                on_batch(batch)
    return len(todo)
