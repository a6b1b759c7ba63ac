"""Teacher-output cache: run the frozen teacher once per utterance, reuse it every KD epoch.

A cache lives in ``<root>/<key>/`` where the key hashes the teacher's fingerprint, the feature
settings and the tapped layers, so a changed teacher or front end can never be served stale
outputs. Each split is one file ``<split>.pt``: ``{utt_id: {output_name: tensor}}`` with the
utterance's own (unpadded) frames, plus ``meta.json``. The cache is only valid when the training
inputs are deterministic, so a run with random crops or augmentation is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from tqdm import tqdm

from kd_modules.dataio import is_placeholder
from kd_modules.teacher import Teacher

logger = logging.getLogger(__name__)


def cache_key(
    fingerprint: str,
    feature_settings: dict,
    taps: dict[str, str],
    manifest: str | Path | None = None,
) -> str:
    """Folder name for a teacher + feature front end + taps (+ training manifest) combination.

    With ``manifest``, the file's content is part of the key, so a re-prepared split (other
    utterance ids) gets a new cache instead of an incomplete old one.
    """
    settings = {"features": feature_settings, "taps": taps}
    if manifest is not None:
        settings["manifest"] = hashlib.sha256(Path(manifest).read_bytes()).hexdigest()
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return f"{fingerprint}-{digest[:8]}"


def check_deterministic_inputs(random_settings: dict) -> None:
    """Refuse the cache when any input-randomising setting is on (values that are truthy).

    ``random_settings`` maps a hyperparameter name (e.g. ``train_random_crop``, ``augment``) to its
    value; a cached teacher output was computed on the clean full clip, so it would be wrong for an
    augmented or cropped view of it.
    """
    active = {name: value for name, value in random_settings.items() if value}
    if active:
        raise ValueError(
            "The teacher cache cannot be used with random input transforms "
            f"{active}: cached outputs were computed on the unmodified clips. "
            "Run the teacher live instead (run.sh: --use_cache false; train.py: "
            "--use_teacher_cache False, the YAML key use_teacher_cache) or turn these settings off."
        )


def _pad_stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Stack per-utterance tensors, zero-padding every dim to the batch maximum."""
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) == 1:
        return torch.stack(tensors)
    shape = [max(sizes) for sizes in zip(*shapes)]
    out = tensors[0].new_zeros(len(tensors), *shape)
    for index, tensor in enumerate(tensors):
        out[(index, *(slice(0, size) for size in tensor.shape))] = tensor
    return out


class TeacherCache:
    """Read access to a built cache folder (every split found there is loaded into memory)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        meta_file = self.folder / "meta.json"
        if not meta_file.is_file():
            raise FileNotFoundError(
                f"No teacher cache at {self.folder} (run the cache stage, stage 3, first)"
            )
        self.meta = json.loads(meta_file.read_text())
        self.entries: dict[str, dict[str, torch.Tensor]] = {}
        for split in self.meta["splits"]:
            self.entries.update(torch.load(self.folder / f"{split}.pt", weights_only=True))

    def __contains__(self, utt_id: str) -> bool:
        return utt_id in self.entries

    def check_covers(self, manifest: str | Path) -> None:
        """Fail now, not mid-epoch, when utterances of ``manifest`` (a JSON manifest) are absent."""
        ids = json.loads(Path(manifest).read_text())
        missing = [utt for utt in ids if utt not in self.entries]
        if missing:
            raise KeyError(
                f"The teacher cache {self.folder} lacks {len(missing)} of the {len(ids)} "
                f"utterances of {manifest} (e.g. {missing[:3]}): rebuild it with stage 3"
            )

    def lookup(self, ids: Iterable[str], device: str | torch.device = "cpu") -> dict:
        """Batch the cached outputs of ``ids``: each name -> (B, ...) padded with zeros."""
        ids = list(ids)
        missing = [utt for utt in ids if utt not in self.entries]
        if missing:
            raise KeyError(
                f"{len(missing)} utterances are not in the teacher cache {self.folder} "
                f"(e.g. {missing[:3]}): rebuild it with stage 3"
            )
        names = self.entries[ids[0]].keys()
        return {
            name: _pad_stack([self.entries[utt][name] for utt in ids]).to(device) for name in names
        }


def build_teacher_cache(
    teacher: Teacher,
    batches: dict[str, Iterable],
    features: Callable[[object], tuple[torch.Tensor, torch.Tensor]],
    folder: str | Path,
    settings: dict,
) -> Path:
    """Run ``teacher`` over every batch of every split and store per-utterance outputs.

    ``batches`` maps a split name to an iterable of SpeechBrain ``PaddedBatch``es of ONE utterance
    each (with ``.id``): without padding the stored outputs are exactly the teacher's outputs on
    the clip, whatever layout a tapped feature has. ``features(batch)`` returns the teacher's
    inputs ``(feats (1, T, F), lens (1,))``. A split already stored is skipped, so an interrupted
    build resumes.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.tmp"):  # left by a build killed while writing
        logger.info("Removing %s, left by an interrupted cache build", stale)
        stale.unlink()
    for split, loader in batches.items():
        target = folder / f"{split}.pt"
        if target.is_file():
            logger.info("Teacher cache for %s exists: %s", split, target)
            continue
        entries: dict[str, dict[str, torch.Tensor]] = {}
        for batch in tqdm(loader, desc=f"teacher cache [{split}]", dynamic_ncols=True):
            if is_placeholder(batch):  # an unreadable clip: no entry (KD runs never look it up)
                continue
            if len(batch.id) != 1:
                raise ValueError("build_teacher_cache needs batches of one utterance (no padding)")
            outputs = teacher(*features(batch))
            entries[batch.id[0]] = {
                name: value[0].cpu().contiguous().clone() for name, value in outputs.items()
            }
        tmp = target.with_suffix(".pt.tmp")
        torch.save(entries, tmp)
        os.replace(tmp, target)
        logger.info("Cached teacher outputs of %d %s utterances", len(entries), split)
    meta = {**settings, "splits": sorted(batches), "fingerprint": teacher.fingerprint}
    tmp = folder / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    os.replace(tmp, folder / "meta.json")
    return folder
