"""``ig_views: shared``: IML-KD's cached views from IG maps computed once per training segment.

The speaker recipe's own composition (tiny ECAPA teacher, random weights, its front end and
integrated input) on real LibriSpeech segments: stage 3 with :class:`SharedViewMaps` must run
the integrated gradients once per segment (not once per view), store for every view the weight
of the segment's maps cropped at ``crop_start // hop`` and normalised over the crop, and the
teacher's outputs on that view's integrated input; a view that is its whole segment gets exactly
the per-view weight.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import SPEAKER_VERIFICATION

from kd_modules.cache import TeacherCache
from kd_modules.cache_build import SharedViewMaps, build_teacher_cache
from kd_modules.dataio import read_audio
from kd_modules.hparams import load_composed
from kd_modules.teacher import IntegratedTeacher, Teacher
from tools import study_ig

HP = SPEAKER_VERIFICATION / "hparams"
CLIPS = (  # (path under librispeech_subset, seconds read): two 3 s segments and a 1.5 s one
    ("LibriSpeech/test-other/1688/142285/1688-142285-0002.flac", 3.0),
    ("LibriSpeech/train-clean-100/83/11691/83-11691-0000.flac", 3.0),
    ("LibriSpeech/train-clean-100/909/131041/909-131041-0000.flac", 1.5),
)
VIEWS = 3
HOP = 160  # samples: the recipe's 10 ms at 16 kHz


def compose(**overrides) -> dict:
    """The recipe's IML-KD composition with the tiny teacher, 2 Gauss–Legendre steps."""
    return load_composed(
        [HP / "common.yaml", HP / "teacher/ecapa_tiny.yaml", HP / "kd/imlkd.yaml"],
        {
            "data_folder": "unused",
            "output_folder": "unused",
            "teacher_folder": "unused",
            "n_speakers": 4,
            "teacher_embedding_dim": 64,
            "ig_steps": 2,
            "ig_rule": "gausslegendre",
            "seed": 0,
            **overrides,
        },
    )


@pytest.fixture(scope="module")
def setup(shared_data):
    hparams = compose(ig_views="shared")
    teacher = IntegratedTeacher(Teacher(hparams["model"]), hparams["integrated_input"])
    root = shared_data / "librispeech_subset"
    signals = {
        f"utt{i}": read_audio(root / path, 16000)[: round(seconds * 16000)]
        for i, (path, seconds) in enumerate(CLIPS)
    }
    labels = {utt: i for i, utt in enumerate(signals)}
    return {
        "hparams": hparams,
        "teacher": teacher,
        "signals": signals,
        "targets": lambda ids: torch.tensor([labels[u] for u in ids]),
    }


def build_shared(setup, folder, calls: list | None = None):
    """Stage 3 with shared maps over the clips; ``calls`` collects each IG call's batch size."""
    replay, teacher = setup["hparams"]["view_replay"], setup["teacher"]
    replay.n_views = VIEWS
    maps = teacher.maps
    if calls is not None:
        teacher.maps = lambda feats, *rest: calls.append(feats.shape[0]) or maps(feats, *rest)
    shared = SharedViewMaps(
        teacher, replay.front_end, replay.make_view, HOP, setup["targets"], VIEWS
    )
    try:
        build_teacher_cache(
            teacher,
            list(setup["signals"]),
            setup["signals"].__getitem__,
            replay.features,
            shared.make_view,
            folder,
            {"test": "shared"},
            n_views=VIEWS,
            batch_size=4,
            shard_seconds=math.inf,
            dtype="float32",
            targets=setup["targets"],
            outputs_of=shared,
        )
    finally:
        teacher.maps = maps
    return shared, TeacherCache(folder)


@pytest.fixture(scope="module")
def built(setup, tmp_path_factory):
    """(SharedViewMaps, its cache, the batch size of each IG call) of one stage 3."""
    calls: list[int] = []
    shared, cache = build_shared(setup, tmp_path_factory.mktemp("cache") / "cache", calls)
    return shared, cache, calls


def test_maps_run_once_per_segment_and_are_released(setup, built):
    shared, cache, calls = built
    assert calls == [1] * len(setup["signals"]), calls  # one IG pass per segment, not per view
    assert len(cache) == len(setup["signals"])
    assert not shared._maps and not shared._signals  # nothing kept after the last view


def test_each_view_stores_its_crop_of_the_segment_maps(setup, built):
    cache = built[1]
    hparams, teacher = setup["hparams"], setup["teacher"]
    replay, integrated = hparams["view_replay"], teacher.integrated
    one = torch.ones(1)
    starts = set()
    for utt, sig in list(setup["signals"].items())[:2]:  # the 3 s segments: crops of 2 s
        seg_feats = replay.front_end(sig.unsqueeze(0), one)
        seg_maps = teacher.maps(seg_feats, one, setup["targets"]([utt]))
        for view in range(VIEWS):
            stored, params = cache.read(utt, view)
            start = int(params[0])
            starts.add(start)
            wave, state = replay.make_view(utt, sig, view)
            feats, _ = replay.features([(utt, view, wave, state)])
            frames = feats.shape[1]
            crop = [m[:, start // HOP : start // HOP + frames] for m in seg_maps]
            weight = integrated.weight(crop, one)
            torch.testing.assert_close(stored["ig_weight"], weight[0])
            outputs = teacher.teacher(integrated.apply(feats, weight), one)
            torch.testing.assert_close(stored["embedding"], outputs["embedding"][0])
            if start % HOP:  # off the hop grid: not the per-view maps
                per_view = teacher(feats, one, setup["targets"]([utt]))["ig_weight"][0]
                assert not torch.allclose(stored["ig_weight"], per_view)
    assert len(starts) > 2 and any(s % HOP for s in starts)  # crops off the hop grid too


def test_a_view_that_is_its_whole_segment_gets_the_per_view_weight(setup, built):
    cache = built[1]
    replay, teacher = setup["hparams"]["view_replay"], setup["teacher"]
    utt, sig = list(setup["signals"].items())[2]  # 1.5 s: shorter than the 2 s crop
    wave, state = replay.make_view(utt, sig, 0)
    feats, _ = replay.features([(utt, 0, wave, state)])
    live = teacher(feats, torch.ones(1), setup["targets"]([utt]))
    stored, params = cache.read(utt, 0)
    assert int(params[0]) == 0
    torch.testing.assert_close(stored["ig_weight"], live["ig_weight"][0])
    torch.testing.assert_close(stored["embedding"], live["embedding"][0])


def test_views_key_enters_the_settings_only_when_shared():
    shared = compose(ig_views="shared")["integrated_input"].settings()
    per_view = compose()["integrated_input"].settings()
    assert shared == {**per_view, "views": "shared"} and "views" not in per_view
    with pytest.raises(ValueError, match="unknown ig_views 'both'; valid: per_view, shared"):
        compose(ig_views="both")


def test_the_paper_variant_keeps_the_method_notes_steps_whatever_the_default():
    def settings(method: str, **overrides) -> dict:
        files = [HP / "common.yaml", HP / "teacher/ecapa_tiny.yaml", HP / f"kd/{method}.yaml"]
        base = {"data_folder": "unused", "output_folder": "unused", "teacher_folder": "unused"}
        hparams = load_composed(files, {**base, "n_speakers": 4, **overrides})
        return hparams["integrated_input"].settings()

    default = settings("imlkd")
    assert (default["steps"], default["rule"]) == (16, "gausslegendre")  # README's study
    paper = settings("imlkd_paper", ig_steps=2, ig_rule="riemann_left", ig_views="shared")
    assert paper == {**default, "steps": 20, "rule": "riemann_right"}


def test_study_compares_the_shared_maps_with_the_per_view_ones(setup, built, tmp_path):
    replay, teacher = setup["hparams"]["view_replay"], setup["teacher"]
    per_view = build_teacher_cache(
        teacher,
        list(setup["signals"]),
        setup["signals"].__getitem__,
        replay.features,
        replay.make_view,
        tmp_path / "per_view",
        {"test": "per_view"},
        n_views=VIEWS,
        shard_seconds=math.inf,
        dtype="float32",
        targets=setup["targets"],
    )
    shared = built[1].folder
    assert study_ig.compare_caches(per_view, per_view) == (3 * VIEWS, 0.0, pytest.approx(1))
    count, error, rho = study_ig.compare_caches(per_view, shared)
    assert count == 3 * VIEWS and 0 < error < 1 and 0.5 < rho < 1, (error, rho)
