"""Stage 3, the teacher cache: every recipe's ``cache_teacher.py`` main.

:func:`run_cache_stage` takes the arguments of a KD run of ``train.py``, loads its frozen teacher
(``kd_modules.teacher``), builds the store where KD runs with ``use_teacher_cache`` look for it
(``kd_modules.cache_build``, under torchrun each rank its share) and optionally checks cached
clips against the live teacher (``kd_modules.replay.verify_cache``).
"""

from __future__ import annotations

import functools
import logging
import random
import sys
from collections.abc import Callable
from pathlib import Path

import speechbrain as sb
import torch.distributed as dist
from speechbrain.utils.distributed import if_main_process

from kd_modules.cache import TeacherCache
from kd_modules.cache_build import SharedViewMaps, build_teacher_cache
from kd_modules.hparams import compose_yaml, load_composed, parse_recipe_arguments
from kd_modules.hub.sources import load_any_teacher
from kd_modules.progress import progress_bar
from kd_modules.replay import verify_cache
from kd_modules.run_folder import LOCK_NAME, folder_lock
from kd_modules.teacher import teacher_cache_folder, teacher_targets, teacher_views

logger = logging.getLogger(__name__)

CACHE_KEYS = ("cache_", "check_cache:")  # how the cache stage's top-level YAML lines begin


def cache_stage_help(argv: list[str], common_yaml: str | Path | None = None) -> str:
    """``cache_teacher.py --help``: the usage and the YAML lines (value and comment) of every cache
    setting of the composition given before ``--help`` (else of ``common_yaml``), so the shard
    size and interval are found where the stage is run, not only in the YAML."""
    files = [arg for arg in argv if arg.endswith((".yaml", ".yml"))]
    files = files or ([common_yaml] if common_yaml is not None else [])
    script = Path(sys.argv[0]).name
    lines = [
        f"usage: {script} common.yaml ARCH.yaml KD.yaml [--key value ...]",
        "Stage 3, the teacher cache: takes the arguments of a KD run of train.py. Override any",
        "YAML key as --key value (e.g. --cache_shard_seconds 30); SpeechBrain's run options",
        "(--device, ...) work as in train.py.",
    ]
    if not files:
        return "\n".join([*lines, "Give the composition before --help to list its cache keys."])
    keys = [line for line in compose_yaml(files).splitlines() if line.startswith(CACHE_KEYS)]
    where = ", ".join(str(file) for file in files)
    return "\n".join([*lines, f"Cache settings (from {where}):", *(f"  {k}" for k in keys)])


def run_cache_stage(
    argv: list[str] | None,
    dataio_prepare: Callable[[dict], dict],
    common_yaml: str | Path | None = None,
) -> Path:
    """A recipe's stage-3 main: run the frozen teacher once over ``cache_views`` seeded views of
    every training clip and store its outputs and tapped features where KD runs with
    ``use_teacher_cache`` look for them; under torchrun each rank computes its share and writes
    its own shards. With ``check_cache`` N > 0 it then re-runs the live teacher on N random
    cached clips and fails loudly on any difference. Takes the arguments of a KD run of
    train.py (hparams ``view_replay``, ``cache_batch_size``, ``cache_shard_size``,
    ``cache_shard_seconds``, ``cache_dtype``, ``cache_topk``, ``check_cache``); ``--help`` lists
    them (:func:`cache_stage_help`: those of ``common_yaml`` when no composition is given)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(argv):
        print(cache_stage_help(argv, common_yaml))
        raise SystemExit(0)
    files, run_opts, overrides = parse_recipe_arguments(argv)
    hparams = load_composed(files, overrides)
    if hparams["method"] == "none":
        raise SystemExit("the cache stage needs a KD composition (kd/*.yaml with a teacher)")
    sb.utils.distributed.ddp_init_group(run_opts)
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = run_opts["device"]
    teacher = load_any_teacher(hparams).to(device)
    replay = hparams["view_replay"]
    replay.front_end.to(device)
    folder = teacher_cache_folder(hparams, teacher)
    dataset = dataio_prepare(hparams)["train"]
    position = {utt: i for i, utt in enumerate(dataset.data_ids)}
    order = sorted(dataset.data_ids, key=lambda utt: dataset.data[utt]["duration"])

    def signal(utt: str):
        return dataset[position[utt]]["sig"]

    settings = {
        "feature_settings": hparams["feature_settings"],
        "teacher_taps": hparams["teacher_taps"],
        "teacher_folder": str(hparams["teacher_folder"]),
        "teacher_source": hparams.get("teacher_source"),
        "teacher_checkpoint": teacher.checkpoint,
        "fingerprint": teacher.fingerprint,
        "augmentation": replay.settings(),
    }
    views = teacher_views(teacher, replay, device)
    make_view, outputs_of = replay.make_view, None
    if getattr(getattr(teacher, "integrated", None), "views", "per_view") == "shared":
        if hparams["check_cache"] > 0:
            raise SystemExit(
                "check_cache re-runs the per-view maps of the live teacher, which ig_views: "
                "shared does not store: run stage 3 with check_cache 0 (--check_cache 0)"
            )
        hop = round(teacher.integrated.hop_length_ms * hparams["sample_rate"] / 1000)
        classes = teacher_targets(hparams, dataset)
        outputs_of = SharedViewMaps(
            teacher, replay.front_end, replay.make_view, hop, classes, replay.n_views, device
        )
        make_view = outputs_of.make_view
    with folder_lock(folder, what="teacher cache folder", name=f"{LOCK_NAME}-r{rank}"):
        build_teacher_cache(  # this rank's share, shortest first: same-length views batch
            teacher,
            order[rank::world],
            signal,
            views,
            make_view,
            folder,
            settings,
            n_views=replay.n_views,
            batch_size=hparams["cache_batch_size"],
            shard_size=hparams["cache_shard_size"],
            shard_seconds=hparams["cache_shard_seconds"],
            dtype=hparams["cache_dtype"],
            topk=hparams["cache_topk"],
            rank=rank,
            progress=functools.partial(progress_bar, disable=not if_main_process()),
            barrier=dist.barrier if distributed else lambda: None,
            targets=teacher_targets(hparams, dataset),
            outputs_of=outputs_of,
        )
    if hparams["check_cache"] > 0 and if_main_process():
        cache = TeacherCache(folder)
        count = min(hparams["check_cache"], len(cache))
        chosen = random.Random(0).sample(sorted(cache.index), count)
        classes = teacher_targets(hparams, dataset)
        labels = {u: int(classes([u])[0]) for u in chosen} if classes is not None else None
        signals = {u: signal(u) for u in chosen}
        worst = verify_cache(cache, teacher, replay, signals, device, targets=labels, views=views)
        logger.info(
            "check_cache: %d cached clips match the live teacher (largest relative error %.2g)",
            len(chosen),
            worst,
        )
    return folder
