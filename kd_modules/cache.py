"""The teacher cache: an on-disk store of the teacher's outputs, per utterance and per view.

Why a store and not a dict in RAM: VoxCeleb1's IG maps are tens of GB and AudioSet has two million
clips, so a KD run must read entries per item and never load the cache whole.

Layout of ``<root>/<key>/`` (the key hashes everything that changes the stored outputs, see
:func:`cache_key`):

- ``shard-r<rank>-<n>.safetensors``: the utterances a rank finished, written atomically
  (temporary file, then rename) when ``shard_size`` of them wait or ``shard_seconds`` have
  passed since the rank's last shard, whichever comes first. Tensors are named
  ``<utt_id>/<view>/<output>`` (the output names of the teacher: ``logits``, ``embedding``,
  tapped features...), stored in ``dtype`` (half precision by default) with their own unpadded
  frames, plus ``<utt_id>/<view>/__params__``: the augmentation parameters of that view
  (:mod:`kd_modules.augment`). The shard's utterance ids are in its safetensors metadata.
- ``meta.json``: written last, once every rank has finished: the settings, output names, number
  of views and utterances. A folder without it is an unfinished build, never served.

Why safetensors: one file per shard holds many named tensors of any shape and dtype with a JSON
header, reads one tensor without reading the rest (memory-mapped), is written in one call (so a
shard is atomic with a rename), and is a small, well-kept, widely used library with no pickle (a
cache can be shared without executing code). numpy memmaps would need a hand-made index for
variable-length entries; HDF5 files are not safe to write from several processes or to kill
mid-write.

Building a store (the teacher run over every view, resumable) is ``kd_modules.cache_build``'s;
the stage-3 driver that builds one from a recipe's hparams is ``kd_modules.stages.cache``'s.

With top-k storage (``topk`` > 0) only the k largest logits of each view are kept (values and
class indices, as CED does); reading fills the other classes with the k-th largest value, which
over-estimates the tail: use it for many-class tasks (AudioSet, VoxCeleb).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

PARAMS = "__params__"
TOPK_VALUES, TOPK_INDICES = "__topk_values__", "__topk_indices__"
META = "meta.json"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
SHARD_SECONDS = 60.0  # a shard is written at least this often: a kill loses at most this much


def cache_key(
    fingerprint: str,
    feature_settings: dict,
    taps: dict[str, str],
    manifest: str | Path | None = None,
    augmentation: dict | None = None,
    storage: dict | None = None,
) -> str:
    """Folder name for everything that changes the stored outputs.

    The teacher's fingerprint, the front end, the tapped layers, the training manifest's content
    (a re-prepared split gets a new cache, not an incomplete old one), the augmentation policy
    with its number of views and seed, and the storage settings (dtype, top-k).
    """
    settings = {"features": feature_settings, "taps": taps}
    if manifest is not None:
        settings["manifest"] = hashlib.sha256(Path(manifest).read_bytes()).hexdigest()
    if augmentation:
        settings["augmentation"] = augmentation
    if storage:
        settings["storage"] = storage
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return f"{fingerprint}-{digest[:8]}"


def check_deterministic_inputs(random_settings: dict) -> None:
    """Refuse the cache when an input-randomising setting that cannot be replayed is on.

    ``random_settings`` maps a hyperparameter name to its value; a cached teacher output was
    computed on one stored view of each clip, so a transform drawn afresh by the KD run (and not
    from the cache's stored parameters) would give the student another input than the teacher's.
    """
    active = {name: value for name, value in random_settings.items() if value}
    if active:
        raise ValueError(
            "The teacher cache cannot be used with random input transforms "
            f"{active}: cached outputs were computed on the unmodified clips. "
            "Run the teacher live instead (run.sh: --use_cache false; train.py: "
            "--use_teacher_cache False, the YAML key use_teacher_cache) or turn these settings off."
        )


class ShardWriter:
    """Collects finished utterances and writes them as atomic safetensors shards of one rank.

    A shard is written when ``shard_size`` utterances wait or when ``shard_seconds`` have passed
    (on ``clock``, seconds) since the last one, whichever comes first: by count, shards stay few
    on a fast teacher; by time, a slow one (integrated gradients) or a small set still writes one
    every ``shard_seconds``.
    """

    def __init__(
        self,
        folder: Path,
        rank: int,
        shard_size: int,
        dtype: str,
        topk: int = 0,
        shard_seconds: float = SHARD_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.folder, self.rank, self.shard_size = folder, rank, shard_size
        self.shard_seconds, self.clock = shard_seconds, clock
        self.last_flush = clock()
        self.dtype, self.topk = DTYPES[dtype], topk
        self.pending: dict[str, torch.Tensor] = {}
        self.ids: list[str] = []
        self.outputs: dict = {}  # output names and class count, recorded in every shard
        self.index = 1 + max(
            (int(p.stem.split("-")[2]) for p in folder.glob(f"shard-r{rank}-*.safetensors")),
            default=-1,
        )

    def add(self, utt_id: str, views: list[tuple[dict, torch.Tensor]]) -> None:
        """Store one utterance: per view, (output name -> tensor without batch dim, params)."""
        for view, (outputs, params) in enumerate(views):
            prefix = f"{utt_id}/{view}/"
            self.outputs = {
                "names": sorted(outputs),
                "n_classes": outputs["logits"].shape[-1] if "logits" in outputs else None,
            }
            for name, value in outputs.items():
                value = value.detach().cpu()
                if name == "logits" and self.topk:
                    top = value.float().topk(min(self.topk, value.shape[-1]), dim=-1)
                    self.pending[prefix + TOPK_VALUES] = top.values.to(self.dtype).contiguous()
                    self.pending[prefix + TOPK_INDICES] = top.indices.to(torch.int32).contiguous()
                    continue
                if value.is_floating_point():
                    value = value.to(self.dtype)
                self.pending[prefix + name] = value.contiguous().clone()
            self.pending[prefix + PARAMS] = params.to(torch.long).contiguous()
        self.ids.append(utt_id)
        due = self.clock() - self.last_flush >= self.shard_seconds
        if due or len(self.ids) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the pending utterances as the next shard (temporary file, then rename)."""
        if not self.ids:
            return
        target = self.folder / f"shard-r{self.rank}-{self.index:06d}.safetensors"
        tmp = self.folder / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
        metadata = {"ids": json.dumps(self.ids), "outputs": json.dumps(self.outputs)}
        save_file(self.pending, str(tmp), metadata=metadata)
        os.replace(tmp, target)
        self.index += 1
        self.pending, self.ids = {}, []
        self.last_flush = self.clock()


def stored_ids(folder: Path) -> dict[str, Path]:
    """Utterance id -> shard file, over every finished shard of every rank."""
    index = {}
    for shard in sorted(folder.glob("shard-r*-*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            for utt_id in json.loads(handle.metadata()["ids"]):
                index[utt_id] = shard
    return index


class TeacherCache:
    """Read access to a finished store: one utterance view at a time, memory-mapped.

    Only the id -> shard index lives in RAM (tens of bytes an utterance); tensors are read from
    at most ``max_open`` memory-mapped shards at a time, whose pages are released when a shard
    leaves that small LRU, so a KD run's memory does not grow with the size of the cache. Safe
    to use from DataLoader worker processes (each reopens its own handles).
    """

    def __init__(self, folder: str | Path, max_open: int = 4) -> None:
        self.folder = Path(folder)
        meta_file = self.folder / META
        if not meta_file.is_file():
            raise FileNotFoundError(
                f"No finished teacher cache at {self.folder} (run the cache stage, stage 3, "
                "first; a build that was killed resumes where it stopped)"
            )
        self.meta = json.loads(meta_file.read_text())
        self.names: list[str] = self.meta["names"]
        self.n_views: int = self.meta["n_views"]
        self.index = stored_ids(self.folder)
        self._unreadable = set(self.meta.get("unreadable", []))
        self.max_open = max_open
        self._handles: OrderedDict[Path, object] = OrderedDict()
        self._pid = os.getpid()

    def __contains__(self, utt_id: str) -> bool:
        return utt_id in self.index

    def __len__(self) -> int:
        return len(self.index)

    def unreadable(self, utt_id: str) -> bool:
        """Whether the cache stage found this clip unreadable (so it stored nothing for it)."""
        return utt_id in self._unreadable

    def check_covers(self, manifest: str | Path) -> None:
        """Fail now, not mid-epoch, when utterances of ``manifest`` (a JSON manifest) are absent."""
        ids = json.loads(Path(manifest).read_text())
        missing = [utt for utt in ids if utt not in self.index and utt not in self._unreadable]
        if missing:
            raise KeyError(
                f"The teacher cache {self.folder} lacks {len(missing)} of the {len(ids)} "
                f"utterances of {manifest} (e.g. {missing[:3]}): rebuild it with stage 3"
            )

    def _handle(self, shard: Path):
        if os.getpid() != self._pid:  # a forked DataLoader worker: never share mmaps
            self._handles, self._pid = OrderedDict(), os.getpid()
        if shard in self._handles:
            self._handles.move_to_end(shard)
            return self._handles[shard]
        handle = safe_open(str(shard), framework="pt")
        self._handles[shard] = handle
        while len(self._handles) > self.max_open:
            self._handles.popitem(last=False)
        return handle

    def read(
        self, utt_id: str, view: int = 0, dtype: torch.dtype | None = torch.float32
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One view of one utterance: (output name -> tensor, augmentation params).

        Tensors come in ``dtype`` (float32 by default; None keeps the stored half precision, half
        the bytes for a DataLoader worker to move: the Brain converts on its device).
        """
        if utt_id not in self.index:
            raise KeyError(
                f"Utterance {utt_id!r} is not in the teacher cache {self.folder}: rebuild it "
                "with stage 3"
            )
        handle = self._handle(self.index[utt_id])
        prefix = f"{utt_id}/{view % self.n_views}/"
        outputs = {}
        for name in self.names:
            if name == "logits" and self.meta.get("topk"):
                value = self._full_logits(handle, prefix)
            else:
                value = handle.get_tensor(prefix + name)
            outputs[name] = value.to(dtype) if dtype is not None else value
        return outputs, handle.get_tensor(prefix + PARAMS)

    def _full_logits(self, handle, prefix: str) -> torch.Tensor:
        """Logits ``(C,)`` from the stored top-k values and indices; others get the k-th value."""
        values = handle.get_tensor(prefix + TOPK_VALUES).float()
        indices = handle.get_tensor(prefix + TOPK_INDICES).long()
        full = values.min(dim=-1, keepdim=True).values.expand(
            *values.shape[:-1], self.meta["n_classes"]
        )
        return full.clone().scatter_(-1, indices, values)

    def example(self) -> dict[str, torch.Tensor]:
        """The outputs of one stored utterance (shapes for a placeholder batch)."""
        return self.read(next(iter(self.index)))[0]

    def lookup(self, ids: Iterable[str], device="cpu", views: Iterable[int] | None = None) -> dict:
        """Batch the outputs of ``ids`` (view 0 unless ``views``): name -> (B, ...) zero-padded."""
        ids = list(ids)
        views = list(views) if views is not None else [0] * len(ids)
        rows = [self.read(utt, view)[0] for utt, view in zip(ids, views)]
        return {name: pad_stack([row[name] for row in rows]).to(device) for name in self.names}


def pad_stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Stack per-utterance tensors, zero-padding every dim to the batch maximum."""
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) == 1:
        return torch.stack(tensors)
    shape = [max(sizes) for sizes in zip(*shapes)]
    out = tensors[0].new_zeros(len(tensors), *shape)
    for index, tensor in enumerate(tensors):
        out[(index, *(slice(0, size) for size in tensor.shape))] = tensor
    return out
