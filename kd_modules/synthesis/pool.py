"""The on-disk pool of synthetic samples: tensors plus one manifest, class-balanced, resumable.

Layout of a pool folder::

    samples/<id>.pt        one log-Mel tensor (T, F) per sample, written atomically
    state/b<index>.pt      the synthesiser's state after the batch (head, Adam, memory bank), until
                           the rank's next batch is written; removed with the merge
    parts/b<index>.json    the samples of one finished batch (written after its tensors and state)
    manifest.json          every sample: {id: {"path", "label_id", "frames"}} (merged at the end);
                           a tagger's pool (:func:`tag_set_plan`) has "targets" (multi-hot)
                           in place of "label_id"

:func:`pool_plan` fixes every batch in advance (its targets, frame count and seed) from the pool's
keys, and a killed synthesis resumes at the first batch without a part file: nothing written
before the kill is lost or redone. The resume is exact: each batch runs under its own torch seed
(targets and lengths come from the plan; nothing draws from numpy's or Python's generators), and
what a synthesiser carries from batch to batch (:meth:`Synthesizer.state_dict`) is saved with
each batch and loaded before the next, so a resumed pool is bit for bit the uninterrupted one.
Under DDP each rank synthesises the batches ``index % world_size == rank`` (one chain of state
per rank: resume with the same number of processes); rank 0 merges the parts into one manifest.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch

from kd_modules.dataio import write_json_atomic
from kd_modules.progress import progress_bar
from kd_modules.synthesis.base import Synthesizer

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class PoolBatch:
    """One synthesis batch of the plan: its index, targets, frame count and seed.

    ``targets``: one class per sample (:func:`pool_plan`), or one multi-hot tag set per sample,
    a tuple of C zeros and ones (:func:`tag_set_plan`)."""

    index: int
    targets: tuple[int, ...] | tuple[tuple[int, ...], ...]
    frames: int
    seed: int


def _batches(order: list, batch_size: int, min_frames: int, max_frames: int, seed: int) -> list:
    """``order`` (one target per sample) cut into batches, each with its frame count drawn from
    ``[min_frames, max_frames]`` and its own seed, both from ``seed`` and its index only."""
    if not 1 <= min_frames <= max_frames:
        raise ValueError(f"need 1 <= min_frames <= max_frames, got {min_frames}, {max_frames}")
    plan = []
    for index, start in enumerate(range(0, len(order), batch_size)):
        rng = random.Random(f"{seed}-{index}")
        frames = rng.randint(min_frames, max_frames)
        batch_seed = rng.randrange(2**31)
        plan.append(PoolBatch(index, tuple(order[start : start + batch_size]), frames, batch_seed))
    return plan


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
    if n_classes < 1 or samples_per_class < 1 or batch_size < 1:
        raise ValueError("n_classes, samples_per_class and batch_size must be >= 1")
    order = [label for _ in range(samples_per_class) for label in range(n_classes)]
    return _batches(order, batch_size, min_frames, max_frames, seed)


def tag_set(tags: list[int], n_outputs: int, implies: dict[int, list[int]]) -> tuple[int, ...]:
    """The multi-hot targets ``(n_outputs,)`` of one clip: its ``tags`` and every output one of
    them implies (see :func:`tag_set_plan`)."""
    hot = {*tags, *(output for tag in tags for output in implies.get(tag, ()))}
    return tuple(int(output in hot) for output in range(n_outputs))


def tag_set_plan(
    n_outputs: int,
    samples_per_tag: int,
    batch_size: int,
    min_frames: int,
    max_frames: int,
    seed: int = 1,
    max_tags_per_clip: int = 2,
    candidates: list[int] | None = None,
    implies: dict[int, list[int]] | None = None,
) -> list[PoolBatch]:
    """The batches of a tagger's pool: ``len(candidates) × samples_per_tag`` clips, each with a
    multi-hot tag set of ``n_outputs`` (ours, the sampling rule of README's data-free section).

    Each clip's first tag is dealt round-robin over ``candidates`` (the outputs a tag set is
    drawn from; default all), so every tag leads exactly ``samples_per_tag`` clips and every
    batch mixes tags; then 0 to ``max_tags_per_clip − 1`` more distinct candidates (the number
    uniform) join it, drawn from ``seed`` and the clip's index only. ``implies`` maps a tag to
    the outputs it switches on too (a fine tag's coarse class: a two-level tagger's targets).
    Frame counts and seeds per batch as :func:`pool_plan`'s.
    """
    candidates = list(range(n_outputs)) if candidates is None else list(candidates)
    if not candidates or samples_per_tag < 1 or batch_size < 1 or max_tags_per_clip < 1:
        raise ValueError("candidates, samples_per_tag, batch_size, max_tags_per_clip must be >= 1")
    implies = implies or {}
    order = []
    for clip in range(len(candidates) * samples_per_tag):
        rng = random.Random(f"{seed}-tags-{clip}")
        first = candidates[clip % len(candidates)]
        others = [tag for tag in candidates if tag != first]
        more = rng.sample(others, min(rng.randint(0, max_tags_per_clip - 1), len(others)))
        order.append(tag_set([first, *more], n_outputs, implies))
    return _batches(order, batch_size, min_frames, max_frames, seed)


def _save_atomic(obj: torch.Tensor | dict, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then renamed onto it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _target_entry(label: int | tuple[int, ...]) -> dict:
    """A sample's manifest target: ``label_id`` (a class) or ``targets`` (a multi-hot tag set)."""
    return {"targets": list(label)} if isinstance(label, tuple) else {"label_id": int(label)}


class SyntheticPool:
    """A pool folder (see the module docstring)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    @property
    def manifest_file(self) -> Path:
        return self.folder / MANIFEST

    def part_file(self, index: int) -> Path:
        return self.folder / "parts" / f"b{index:06d}.json"

    def state_file(self, index: int) -> Path:
        return self.folder / "state" / f"b{index:06d}.pt"

    def started(self) -> bool:
        """True when anything was synthesised here (a manifest or a batch's part file)."""
        parts = self.folder / "parts"
        return self.manifest_file.is_file() or (parts.is_dir() and any(parts.iterdir()))

    def done(self, batch: PoolBatch) -> bool:
        """True when the batch's tensors and part file are on disk."""
        return self.part_file(batch.index).is_file()

    def write_batch(self, batch: PoolBatch, x: torch.Tensor, state: dict | None = None) -> dict:
        """Store ``x`` (B, T, F) as the batch's samples, then the synthesiser's ``state`` after
        it (if given), then its part file, which marks the batch done (atomic, in order)."""
        if x.shape[0] != len(batch.targets) or x.shape[1] != batch.frames:
            raise ValueError(
                f"batch {batch.index}: got {tuple(x.shape)}, planned "
                f"{len(batch.targets)} x {batch.frames} frames"
            )
        samples = self.folder / "samples"
        samples.mkdir(parents=True, exist_ok=True)
        entries = {}
        for i, (label, sample) in enumerate(zip(batch.targets, x)):
            sample_id = f"b{batch.index:06d}_{i:03d}"
            _save_atomic(sample.float().cpu().clone(), samples / f"{sample_id}.pt")
            entries[sample_id] = {"path": f"samples/{sample_id}.pt", **_target_entry(label)}
            entries[sample_id]["frames"] = batch.frames
        if state is not None:
            _save_atomic(state, self.state_file(batch.index))
        write_json_atomic(self.part_file(batch.index), entries)
        return entries

    def load_state(self, index: int) -> dict | None:
        """The synthesiser's state saved with batch ``index`` (on CPU), None if there is none."""
        path = self.state_file(index)
        return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None

    def forget_state(self, index: int) -> None:
        """Remove batch ``index``'s state: a later batch of the same rank holds the newer one."""
        self.state_file(index).unlink(missing_ok=True)

    def merge(self, plan: list[PoolBatch]) -> dict:
        """Write ``manifest.json`` from the part files of every planned batch; return it."""
        missing = [batch.index for batch in plan if not self.done(batch)]
        if missing:
            raise RuntimeError(
                f"pool {self.folder}: {len(missing)} planned batches are not "
                f"synthesised yet (first: {missing[:5]})"
            )
        manifest = {}
        for batch in plan:
            manifest.update(json.loads(self.part_file(batch.index).read_text()))
        write_json_atomic(self.manifest_file, manifest)
        shutil.rmtree(self.folder / "state", ignore_errors=True)  # only a resume needs it
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


def resume_state(synthesizer: Synthesizer, pool: SyntheticPool, previous: int | None) -> None:
    """Put ``synthesizer`` in the state it had after batch ``previous`` (None: fresh).

    A state missing from the pool (a pool begun before states were saved) is warned about: the
    remaining batches then start from a fresh state, as they did before.
    """
    state = {} if previous is None else pool.load_state(previous)
    if state is None:
        logger.warning(
            "pool %s: no synthesiser state for batch %d (%s): the remaining batches start from "
            "a fresh %s state and differ from an uninterrupted synthesis. Delete the folder for "
            "an exact pool.",
            pool.folder,
            previous,
            pool.state_file(previous),
            synthesizer.name,
        )
        state = {}
    synthesizer.load_state_dict(state)


def synthesize_pool(
    synthesizer: Synthesizer,
    pool: SyntheticPool,
    plan: list[PoolBatch],
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    on_batch: Callable[[PoolBatch], None] | None = None,
    progress_file: TextIO | None = None,
) -> int:
    """Synthesise this rank's unfinished batches of ``plan`` into ``pool``; return how many.

    Each batch runs under its own seed (torch's RNG is forked, so the caller's is untouched). A
    synthesiser that carries state over batches (the contrastive projection head and memory
    bank, a kept generator) starts the rank's first batch fresh, and continues every other one
    from the state saved with the rank's previous batch, loaded from the pool unless this call
    has just made it: a resumed pool equals an uninterrupted one. The progress bar
    (:func:`~kd_modules.progress.progress_bar`, to ``progress_file``, default stderr) counts this
    rank's samples from those a resume found done, with an ETA, also in a redirected log.
    ``on_batch`` is called after each batch is written (tests use it to simulate a kill).
    """
    mine = [batch for batch in plan if batch.index % world_size == rank]
    previous = {b.index: a.index for a, b in zip(mine, mine[1:])}
    todo = [batch for batch in mine if not pool.done(batch)]
    total = sum(len(batch.targets) for batch in mine)
    initial = total - sum(len(batch.targets) for batch in todo)
    if initial and progress:
        logger.info(
            "resuming: %d of %d samples of this rank already in %s", initial, total, pool.folder
        )
    bar = progress_bar(
        total=total,
        initial=initial,
        unit="sample",
        file=progress_file,
        desc=f"{synthesizer.name} pool (rank {rank})",
        disable=not progress,
    )
    device = synthesizer.device
    devices = [device.index or 0] if device.type == "cuda" else []
    last: int | None = None  # the batch this call synthesised last
    with bar:
        for batch in todo:
            before = previous.get(batch.index)
            with torch.random.fork_rng(devices=devices):
                if synthesizer.carries_state and (last is None or before != last):
                    resume_state(synthesizer, pool, before)
                torch.manual_seed(batch.seed)
                x = synthesizer.synthesize(torch.tensor(batch.targets), batch.frames)
            state = synthesizer.state_dict() if synthesizer.carries_state else None
            pool.write_batch(batch, x, state)
            if before is not None:
                pool.forget_state(before)
            last = batch.index
            bar.update(len(batch.targets))
            if on_batch is not None:
                on_batch(batch)
    return len(todo)
