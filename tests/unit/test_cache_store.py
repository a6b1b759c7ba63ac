"""The on-disk teacher cache and seeded augmentation replay, on real FSDD clips.

The teacher is the recipe's x-vector (random weights are enough: the cache must reproduce whatever
the teacher computes). Views are 0.3 s random crops with time and frequency masks, so every view
of every clip has the same length and the build can batch them.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import random
import subprocess
import sys
from functools import partial

import pytest
import torch
from conftest import FSDD_CLIPS, RECIPE, REPO
from safetensors import safe_open

from kd_modules.augment import AugmentPolicy, epoch_view, mix
from kd_modules.cache import ShardWriter, TeacherCache, cache_key, stored_ids
from kd_modules.cache_build import build_teacher_cache
from kd_modules.dataio import read_audio
from kd_modules.hparams import load_composed
from kd_modules.progress import progress_bar
from kd_modules.replay import CacheMismatchError, ViewReplay, verify_cache
from kd_modules.teacher import Teacher

HP = RECIPE / "hparams"
N_CLIPS = 12
VIEWS = 3


def recipe_model(seed: int) -> dict:
    """The recipe's student x-vector, initialised from ``seed`` (its YAML seeds torch)."""
    return load_composed(
        [HP / "common.yaml", HP / "student/xvector_small.yaml", HP / "kd/none.yaml"],
        {"data_folder": "unused", "output_folder": "unused", "n_classes": 10, "seed": seed},
    )


@pytest.fixture(scope="module")
def setup():
    hparams = recipe_model(0)
    teacher = Teacher(hparams["model"], taps={"frames": "encoder.blocks.5"})
    front = hparams["compute_features"], hparams["normalize"]

    def front_end(wavs, lens):
        return front[1](front[0](wavs), lens)

    policy = AugmentPolicy(random_crop=True, crop_samples=4800, spec_masks=True)
    replay = ViewReplay(policy, front_end, seed=7, n_views=VIEWS)
    clips = sorted(FSDD_CLIPS.glob("*.flac"))[:N_CLIPS]
    signals = {clip.stem: read_audio(clip, 16000) for clip in clips}
    return {"teacher": teacher, "replay": replay, "signals": signals, "hparams": hparams}


def build(setup, folder, examples=None, load=None, teacher=None, **kwargs):
    """Cache ``examples`` ((utt_id, waveform) pairs, default every clip) read by ``load`` (default
    a dict lookup); shards by count only (5 clips) unless ``shard_seconds`` is given."""
    examples = dict(setup["signals"] if examples is None else examples)
    options = {
        "n_views": VIEWS,
        "batch_size": 8,
        "shard_size": 5,
        "shard_seconds": math.inf,
        "dtype": "float32",
        **kwargs,
    }
    return build_teacher_cache(
        teacher or setup["teacher"],
        list(examples),
        load or examples.__getitem__,
        setup["replay"].features,
        setup["replay"].make_view,
        folder,
        {"names_of": "test"},
        **options,
    )


def one_view(setup, utt_id: str, view: int) -> tuple[dict, torch.Tensor]:
    """The teacher's outputs on one view, computed alone (batch of one)."""
    replay = setup["replay"]
    wave, state = replay.make_view(utt_id, setup["signals"][utt_id], view)
    feats, params = replay.features([(utt_id, view, wave, state)])
    outputs = setup["teacher"](feats, torch.ones(1))
    return {name: value[0] for name, value in outputs.items()}, params[0]


def test_batched_build_equals_one_clip_at_a_time(setup, tmp_path):
    cache = TeacherCache(build(setup, tmp_path / "batched", batch_size=8))
    assert len(cache) == N_CLIPS and cache.n_views == VIEWS
    assert sorted(cache.names) == ["embedding", "frames", "logits"]
    ids = list(setup["signals"])
    random.Random(0).shuffle(ids)  # keyed by id, never by position
    for utt_id in ids:
        for view in range(VIEWS):
            stored, params = cache.read(utt_id, view)
            alone, alone_params = one_view(setup, utt_id, view)
            assert torch.equal(params, alone_params)
            for name, value in alone.items():
                torch.testing.assert_close(stored[name], value, rtol=1e-3, atol=1e-4)


def test_views_differ_and_epochs_visit_them(setup, tmp_path):
    cache = TeacherCache(build(setup, tmp_path / "c"))
    utt_id = next(iter(setup["signals"]))
    params = [cache.read(utt_id, view)[1] for view in range(VIEWS)]
    assert len({tuple(p.tolist()) for p in params}) == VIEWS, params
    seen = {epoch_view(7, utt_id, epoch, VIEWS) for epoch in range(1, 30)}
    assert seen == set(range(VIEWS))


def test_replayed_student_input_is_the_teachers_view(setup, tmp_path):
    """A KD run reads the epoch's view (parameters + outputs) from the cache, crops the waveform
    and masks the features with the stored parameters, as the Brain does: the live teacher on
    that input gives the cached outputs."""
    cache = TeacherCache(build(setup, tmp_path / "c"))
    replay, policy = setup["replay"], setup["replay"].policy
    item = replay.dataset_item(cache)
    for epoch in (1, 2, 3):
        replay.epoch = epoch
        for utt_id, sig in setup["signals"].items():
            params, *outputs = list(item.func(utt_id))
            n = torch.tensor([sig.numel()])
            wavs, lens = policy.crop_batch(sig[None], n, params[None, 0])
            feats = policy.mask(replay.front_end(wavs, lens), params[None])
            live = setup["teacher"](feats, lens)
            for name, value in zip(cache.names, outputs):
                torch.testing.assert_close(value, live[name][0], rtol=1e-3, atol=1e-4)
    replay.epoch = 1


class Killed(Exception):
    """A kill of the build, raised from inside it."""


def killed_after(signals: dict, count: int):
    """A ``load`` that reads ``count`` clips, then is killed."""
    calls = iter(range(count + 1))

    def load(utt_id: str) -> torch.Tensor:
        if next(calls) == count:
            raise Killed
        return signals[utt_id]

    return load


def test_killed_build_resumes_and_keeps_finished_shards(setup, tmp_path):
    folder = tmp_path / "c"
    examples = list(setup["signals"].items())

    with pytest.raises(Killed):
        build(setup, folder, load=killed_after(dict(examples), 11), batch_size=1)
    shards = sorted(folder.glob("shard-*.safetensors"))
    assert len(shards) == 2 and len(stored_ids(folder)) == 10  # 2 shards of 5; 1 clip lost
    with pytest.raises(FileNotFoundError, match="No finished teacher cache"):
        TeacherCache(folder)
    mtimes = [shard.stat().st_mtime_ns for shard in shards]
    build(setup, folder, examples=examples)
    assert [shard.stat().st_mtime_ns for shard in shards] == mtimes, "finished shards kept"
    assert len(TeacherCache(folder)) == N_CLIPS


def test_shards_are_written_by_count_or_by_time_whichever_first(tmp_path):
    """Issue 16 item 5: a slow teacher or a small set still writes a shard every shard_seconds."""
    now = [0.0]
    writer = ShardWriter(
        tmp_path, 0, shard_size=4, dtype="float32", shard_seconds=60.0, clock=lambda: now[0]
    )
    outputs = {"logits": torch.arange(4.0)}
    for index, seconds in enumerate([10.0, 50.0, 61.0, 70.0, 80.0, 90.0, 100.0]):
        now[0] = seconds
        writer.add(f"u{index}", [(outputs, torch.zeros(1))])
    shards = [
        json.loads(safe_open(str(p), "pt").metadata()["ids"])
        for p in sorted(tmp_path.glob("shard-*"))
    ]
    assert shards == [["u0", "u1", "u2"], ["u3", "u4", "u5", "u6"]]  # by time, then by count
    now[0] = 170.0
    writer.add("u7", [(outputs, torch.zeros(1))])  # 70 s after the last shard
    assert len(list(tmp_path.glob("shard-*"))) == 3 and not writer.ids


def killed_teacher(teacher, batches: int):
    """The teacher, killed when it is asked for its ``batches + 1``-th batch."""
    calls = iter(range(batches + 1))

    def run(feats, lens):
        if next(calls) == batches:
            raise Killed
        return teacher(feats, lens)

    return run


def test_time_sharded_build_killed_keeps_its_shards_and_resumes_to_the_same_cache(
    setup, tmp_path, caplog
):
    """Issue 16 items 5 and 6: the default shard (256 clips) is never full on a small set, so a
    kill kept nothing; with shards written by time (here after every finished clip) the kill
    keeps them, the resumed bar counts from them, and the cache equals an uninterrupted one."""
    options = {"batch_size": 1, "shard_size": 256}  # one view a batch: 3 batches a clip
    whole = TeacherCache(build(setup, tmp_path / "whole", **options))
    folder = tmp_path / "c"
    with pytest.raises(Killed):
        build(
            setup, folder, teacher=killed_teacher(setup["teacher"], 8), shard_seconds=0.0, **options
        )
    shards = sorted(folder.glob("shard-*.safetensors"))
    first = list(setup["signals"])[:2]  # 8 batches: 2 clips and 2 of the third one's 3 views
    assert len(shards) == 2 and sorted(stored_ids(folder)) == sorted(first)
    mtimes = [shard.stat().st_mtime_ns for shard in shards]
    log = io.StringIO()
    with caplog.at_level(logging.INFO, logger="kd_modules.cache_build"):
        build(
            setup,
            folder,
            shard_seconds=0.0,
            progress=partial(progress_bar, file=log, log_interval_s=0),
            **options,
        )
    assert f"resuming: 2 of {N_CLIPS} utterances already cached" in caplog.text
    assert [shard.stat().st_mtime_ns for shard in shards] == mtimes, "finished shards kept"
    lines = log.getvalue().splitlines()
    assert f"2/{N_CLIPS} " in lines[0] and f"{N_CLIPS}/{N_CLIPS} " in lines[-1]
    assert len(list(folder.glob("shard-*"))) == N_CLIPS  # many small shards: all read back
    resumed = TeacherCache(folder, max_open=2)
    assert sorted(resumed.index) == sorted(whole.index)
    for utt_id in setup["signals"]:
        for view in range(VIEWS):
            got, got_params = resumed.read(utt_id, view)
            want, want_params = whole.read(utt_id, view)
            assert torch.equal(got_params, want_params)
            for name, value in want.items():  # SpeechBrain's statistics pooling adds noise
                torch.testing.assert_close(got[name], value, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(
    "recipe", ["sound_classification", "audio_tagging", "speaker_verification"]
)
@pytest.mark.slow
def test_cache_stage_help_lists_the_shard_settings(recipe):
    folder = REPO / "recipes" / recipe
    proc = subprocess.run(
        [sys.executable, "cache_teacher.py", "--help"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr
    keys = {line.split(":")[0].strip() for line in proc.stdout.splitlines() if ": " in line}
    assert {"cache_shard_size", "cache_shard_seconds", "cache_batch_size"} <= keys, proc.stdout
    assert f"from {folder / 'hparams' / 'common.yaml'}" in proc.stdout


def test_ranks_write_their_own_shards(setup, tmp_path):
    folder = tmp_path / "c"
    examples = list(setup["signals"].items())
    build(setup, folder, rank=1, examples=examples[1::2])
    assert not (folder / "meta.json").exists()
    build(setup, folder, rank=0, examples=examples[0::2])
    assert {p.name.split("-")[1] for p in folder.glob("shard-*")} == {"r0", "r1"}
    cache = TeacherCache(folder)
    assert len(cache) == N_CLIPS
    assert json.loads((folder / "meta.json").read_text())["utterances"] == N_CLIPS


def test_unreadable_clips_are_recorded_not_stored(setup, tmp_path):
    examples = list(setup["signals"].items())
    bad = examples[3][0]
    examples[3] = (bad, torch.zeros(0))  # what the data pipeline gives for an unreadable clip
    cache = TeacherCache(build(setup, tmp_path / "c", examples=examples))
    assert bad not in cache and cache.unreadable(bad) and len(cache) == N_CLIPS - 1
    params, *outputs = list(setup["replay"].dataset_item(cache).func(bad))
    assert all(value.numel() == 0 for value in outputs)


def test_half_precision_and_top_k_storage(setup, tmp_path):
    exact = TeacherCache(build(setup, tmp_path / "f32"))
    half = TeacherCache(build(setup, tmp_path / "f16", dtype="float16", topk=3))
    assert half.meta["n_classes"] == 10
    for utt_id in setup["signals"]:
        full, _ = exact.read(utt_id, 1)
        small, _ = half.read(utt_id, 1)
        torch.testing.assert_close(small["frames"], full["frames"], rtol=2e-3, atol=2e-3)
        top = full["logits"].topk(3)
        torch.testing.assert_close(small["logits"][top.indices], top.values, rtol=2e-3, atol=2e-3)
        others = torch.ones(10, dtype=torch.bool)
        others[top.indices] = False
        assert torch.all(small["logits"][others] == small["logits"][top.indices].min())
    size = sum(p.stat().st_size for p in (tmp_path / "f16").glob("shard-*"))
    assert size < 0.6 * sum(p.stat().st_size for p in (tmp_path / "f32").glob("shard-*"))


def test_check_cache_passes_and_catches_another_teacher(setup, tmp_path):
    cache = TeacherCache(build(setup, tmp_path / "c", dtype="float16"))
    worst = verify_cache(cache, setup["teacher"], setup["replay"], setup["signals"])
    assert worst < 1e-2
    other = Teacher(recipe_model(1)["model"], taps={"frames": "encoder.blocks.5"})
    with pytest.raises(CacheMismatchError, match="differs from the live teacher"):
        verify_cache(cache, other, setup["replay"], setup["signals"])
    reseeded = ViewReplay(setup["replay"].policy, setup["replay"].front_end, seed=8, n_views=3)
    with pytest.raises(CacheMismatchError, match="augmentation parameters"):
        verify_cache(cache, setup["teacher"], reseeded, setup["signals"])


def test_cache_key_covers_augmentation_and_storage(tmp_path):
    manifest = tmp_path / "train.json"
    manifest.write_text("{}")
    base = cache_key("f" * 16, {"n_mels": 40}, {}, manifest)
    policy = AugmentPolicy(spec_masks=True)
    keys = {
        base,
        cache_key("f" * 16, {"n_mels": 40}, {}, manifest, augmentation=policy.settings()),
        cache_key("f" * 16, {"n_mels": 40}, {}, manifest, augmentation={"n_views": 2}),
        cache_key("f" * 16, {"n_mels": 40}, {}, manifest, storage={"dtype": "float16"}),
        cache_key("f" * 16, {"n_mels": 64}, {}, manifest),
    }
    assert len(keys) == 5


def test_mixup_mixes_teacher_outputs_with_the_inputs_pairing():
    teacher = {"logits": torch.eye(3), "ids": torch.tensor([0, 1, 2])}
    mixed = mix(teacher, 0.75, torch.tensor([2, 0, 1]))
    torch.testing.assert_close(mixed["logits"][0], torch.tensor([0.75, 0.0, 0.25]))
    assert torch.equal(mixed["ids"], teacher["ids"])  # integer outputs are not mixed
