"""Building the teacher cache: the frozen teacher run once over every view of every clip.

The store's layout is ``kd_modules.cache``'s. Views of one length are batched together, so no
padding ever reaches the teacher (its outputs on a padded batch would not be the outputs a KD run
recomputes). A build killed mid-way keeps every finished shard and resumes after them: it loses
at most one shard per rank, about ``shard_seconds`` of its compute (a minute by default, plus
the batch in flight) whatever the size of the dataset (a 108-utterance set never fills a
256-utterance shard).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from kd_modules.cache import META, SHARD_SECONDS, ShardWriter, stored_ids
from kd_modules.progress import progress_bar

logger = logging.getLogger(__name__)


def _length_buckets(
    examples: Iterable[tuple[str, torch.Tensor]],
    n_views: int,
    make_view: Callable[[str, torch.Tensor, int], tuple[torch.Tensor, object]],
    batch_size: int,
) -> Iterator[list[tuple[str, int, torch.Tensor, object]]]:
    """Batches of same-length views (no padding ever reaches the teacher).

    ``make_view(utt_id, sig, view)`` returns the view's waveform (cropped) and its draw state;
    views wait in one bucket per length, a full bucket is emitted at once, and all buckets are
    emitted when ``4 × batch_size`` views wait (input sorted by length batches best).
    """
    buckets: dict[int, list] = {}
    waiting = 0
    for utt_id, sig in examples:
        for view in range(n_views):
            wave, state = make_view(utt_id, sig, view)
            bucket = buckets.setdefault(wave.numel(), [])
            bucket.append((utt_id, view, wave, state))
            waiting += 1
            if len(bucket) >= batch_size:
                waiting -= len(bucket)
                yield buckets.pop(wave.numel())
        if waiting >= 4 * batch_size:
            yield from buckets.values()
            buckets, waiting = {}, 0
    yield from buckets.values()


def build_teacher_cache(
    teacher: Callable[[torch.Tensor, torch.Tensor], dict],
    ids: Sequence[str],
    load: Callable[[str], torch.Tensor],
    views: Callable[[list[tuple[str, int, torch.Tensor, object]]], tuple[torch.Tensor, list]],
    make_view: Callable[[str, torch.Tensor, int], tuple[torch.Tensor, object]],
    folder: str | Path,
    settings: dict,
    n_views: int = 1,
    batch_size: int = 16,
    shard_size: int = 256,
    shard_seconds: float = SHARD_SECONDS,
    dtype: str = "float16",
    topk: int = 0,
    rank: int = 0,
    progress: Callable[..., Any] = progress_bar,
    barrier: Callable[[], None] = lambda: None,
    targets: Callable[[list[str]], torch.Tensor] | None = None,
) -> Path:
    """Run the teacher over every view of every utterance and store its outputs.

    ``ids`` is this rank's share of the utterances, sorted by length for the best batching;
    ``load(utt_id)`` reads one waveform ``(S,)``, empty for an unreadable clip (recorded in
    ``meta.json``, which KD runs consult to skip it). ``make_view`` cuts a view's waveform and
    returns its draw state; ``views(batch)`` turns a batch of same-length views into the
    teacher's input features ``(B, T, F)`` (front end + masks) and each view's parameter vector.
    Utterances already in a finished shard are skipped without being read, so a killed build
    resumes where its last shard ended; ``progress(total=, initial=, desc=, unit=)`` (a
    :func:`~kd_modules.progress.progress_bar`) counts utterances from those. ``meta.json`` is
    written by rank 0 after ``barrier()`` once all ranks are done. A finished cache is returned
    at once. With ``targets`` (utterance ids -> their classes ``(B,)``) the teacher is called as
    ``teacher(feats, lens, targets)``, for teachers whose outputs depend on the true class.
    """
    folder = Path(folder)
    if (folder / META).is_file():
        logger.info("Teacher cache %s is complete", folder)
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    # left by this rank's build killed while writing (another rank's may be mid-write now)
    for stale in folder.glob(f".shard-r{rank}-*.tmp"):
        logger.info("Removing %s, left by an interrupted cache build", stale)
        stale.unlink()
    stored = set(stored_ids(folder))
    todo = [utt for utt in ids if utt not in stored]
    if len(todo) < len(ids):
        logger.info(
            "Teacher cache %s: resuming: %d of %d utterances already cached",
            folder,
            len(ids) - len(todo),
            len(ids),
        )
    writer = ShardWriter(folder, rank, shard_size, dtype, topk, shard_seconds)
    bar = progress(
        total=len(ids),
        initial=len(ids) - len(todo),
        desc=f"teacher cache (rank {rank})",
        unit="utt",
    )
    unreadable: list[str] = []

    def readable():
        for utt in todo:
            sig = load(utt)
            if sig.numel() == 0:
                unreadable.append(utt)
                bar.update(1)
            else:
                yield utt, sig

    finished: dict[str, list] = {}
    with bar:
        for batch in _length_buckets(readable(), n_views, make_view, batch_size):
            feats, params = views(batch)
            lens = torch.ones(feats.shape[0], device=feats.device)
            if targets is None:
                outputs = teacher(feats, lens)
            else:
                classes = targets([utt for utt, *_ in batch]).to(feats.device)
                outputs = teacher(feats, lens, classes)
            for row, (utt_id, view, _, _) in enumerate(batch):
                entry = {name: value[row] for name, value in outputs.items()}
                views_of = finished.setdefault(utt_id, [None] * n_views)
                views_of[view] = (entry, params[row])
                if all(v is not None for v in views_of):
                    writer.add(utt_id, finished.pop(utt_id))
                    bar.update(1)
    writer.flush()
    (folder / f"unreadable-r{rank}.json").write_text(json.dumps(unreadable))
    barrier()
    if rank == 0:
        _write_meta(folder, settings, n_views, dtype, topk)
    return folder


def _write_meta(folder: Path, settings: dict, n_views: int, dtype: str, topk: int) -> None:
    """``meta.json``, written last (atomically): the store is finished and may be served."""
    files = folder.glob("unreadable-r*.json")
    skipped = sorted(utt for file in files for utt in json.loads(file.read_text()))
    meta = {
        **settings,
        **_stored_outputs(folder),
        "unreadable": skipped,
        "n_views": n_views,
        "dtype": dtype,
        "topk": topk,
        "utterances": len(stored_ids(folder)),
    }
    tmp = folder / f".{META}.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    os.replace(tmp, folder / META)


def _stored_outputs(folder: Path) -> dict:
    """``{names, n_classes}`` recorded in the store's shards."""
    shard = next(folder.glob("shard-r*-*.safetensors"), None)
    if shard is None:
        raise RuntimeError(f"The teacher cache {folder} has no shard: is the training set empty?")
    with safe_open(str(shard), framework="pt") as handle:
        return json.loads(handle.metadata()["outputs"])
