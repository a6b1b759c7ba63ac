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
    outputs_of: Callable[[list, torch.Tensor, torch.Tensor], dict] | None = None,
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
    ``outputs_of(batch, feats, lens)``, when given, replaces the teacher call: for outputs that
    need the batch's entries (utterance, view, crop), e.g. :class:`SharedViewMaps`.
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
            if outputs_of is not None:
                outputs = outputs_of(batch, feats, lens)
            elif targets is None:
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


class SharedViewMaps:
    """IML-KD's cached views from IG maps computed once per training segment (``ig_views:
    shared``), each view's map cropped from its segment's.

    Per-view maps (the method) cost ``n_views`` IG passes over a crop; these cost one over the
    segment. They are not the per-view maps: IG runs on the segment's own features (sentence
    mean over the whole segment, no time/frequency masks), its d-second tiles start at the
    segment's start rather than the crop's, and a view's frame offset is ``crop_start // hop``
    (the frames of the crop and of the segment align to within one hop). Each view's weight is
    then normalised over its own crop (``IntegratedInput.weight``), and the teacher runs on that
    view's (masked) features times ``1 + weight``, as per view.

    ``teacher`` is an :class:`~kd_modules.teacher.IntegratedTeacher`; ``front_end`` gives the
    clean features (``(1, S) -> (1, T, F)``); ``make_view`` is the replay's; ``hop`` is the
    front end's hop in samples; ``targets`` maps utterance ids to their classes ``(B,)``.
    :meth:`make_view` wraps the replay's (it keeps each segment's waveform until its
    ``n_views`` views are cached); the object itself is ``build_teacher_cache``'s
    ``outputs_of``.
    """

    def __init__(
        self,
        teacher: Any,
        front_end: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        make_view: Callable[[str, torch.Tensor, int], tuple[torch.Tensor, object]],
        hop: int,
        targets: Callable[[list[str]], torch.Tensor],
        n_views: int,
        device: str | torch.device = "cpu",
    ) -> None:
        self.teacher, self.front_end, self._make_view = teacher, front_end, make_view
        self.hop, self.targets, self.n_views, self.device = int(hop), targets, n_views, device
        self._signals: dict[str, torch.Tensor] = {}
        self._maps: dict[str, list[torch.Tensor]] = {}
        self._done: dict[str, int] = {}

    def make_view(self, utt_id: str, sig: torch.Tensor, view: int) -> tuple:
        """The replay's view of ``sig`` ``(S,)``; keeps ``sig`` for the segment's maps."""
        self._signals[utt_id] = sig
        return self._make_view(utt_id, sig, view)

    def segment_maps(self, utt_id: str) -> list[torch.Tensor]:
        """The maps A_d ``(T_s, F)`` of the utterance's whole segment, computed once."""
        if utt_id not in self._maps:
            sig = self._signals[utt_id].to(self.device).unsqueeze(0)
            ones = torch.ones(1, device=self.device)
            with torch.no_grad():
                feats = self.front_end(sig, ones)
            classes = self.targets([utt_id]).to(self.device)
            self._maps[utt_id] = [m[0] for m in self.teacher.maps(feats, ones, classes)]
        return self._maps[utt_id]

    def _release(self, utt_id: str) -> None:
        """Forget the segment once its last view is cached."""
        self._done[utt_id] = self._done.get(utt_id, 0) + 1
        if self._done[utt_id] == self.n_views:
            for store in (self._signals, self._maps, self._done):
                store.pop(utt_id, None)

    def __call__(self, batch: list, feats: torch.Tensor, lens: torch.Tensor) -> dict:
        """The teacher's outputs on each view's integrated input plus ``ig_weight`` (B, T', F)
        for same-length views ``batch`` (``(utt_id, view, wave, (generator, crop_start))``)
        with features ``feats`` (B, T, F)."""
        frames = feats.shape[1]
        crops = []
        for utt_id, _, _, (_, start) in batch:
            offset = int(start) // self.hop
            crops.append([m[offset : offset + frames] for m in self.segment_maps(utt_id)])
            self._release(utt_id)
        maps = [torch.stack(per_duration) for per_duration in zip(*crops)]
        integrated = self.teacher.integrated
        weight = integrated.weight(maps, lens)
        outputs = self.teacher.teacher(integrated.apply(feats, weight.to(feats.dtype)), lens)
        return {**outputs, "ig_weight": weight.detach()}
