"""KD with augmentation from the teacher cache, through the recipe's own stage 3 and Brain, on
real FSDD clips: every training batch the student sees is the view the cached teacher saw (the
live teacher on the student's input gives the cached outputs), epochs show different views,
mixup mixes cached targets like the inputs, and transforms the cache cannot replay are refused."""

from __future__ import annotations

import json

import pytest
import soundfile as sf
import torch
from conftest import FSDD_CLIPS, RECIPE

from kd_modules.brains import ClassificationBrain
from kd_modules.cache import TeacherCache
from kd_modules.hparams import load_composed
from kd_modules.replay import CacheMismatchError
from kd_modules.stages.cache import run_cache_stage
from kd_modules.teacher import load_teacher, teacher_cache_folder

pytestmark = pytest.mark.slow  # every test uses the recipe's trained teacher and its cache
HP = RECIPE / "hparams"
CROP_S = 0.25  # shorter than every clip used: all views have the same length, nothing is padded


def long_clips(count: int) -> list:
    clips = [c for c in sorted(FSDD_CLIPS.glob("*.flac")) if sf.info(str(c)).duration > 0.3]
    return clips[:count]


@pytest.fixture(scope="module")
def exp(tmp_path_factory, recipe_train):
    root = tmp_path_factory.mktemp("replay")
    data = root / "data"
    data.mkdir()
    clips = long_clips(40)
    for split, part in (("train", clips[:24]), ("valid", clips[24:32]), ("test", clips[32:])):
        entries = {
            c.stem: {
                "wav": str(c),
                "duration": sf.info(str(c)).duration,
                "label_id": int(c.stem[0]),
                "label": c.stem[0],
            }
            for c in part
        }
        (data / f"{split}.json").write_text(json.dumps(entries))
    common = [
        "--data_folder",
        str(data),
        "--n_classes",
        "10",
        "--num_workers",
        "0",
        "--device",
        "cpu",
        "--noprogressbar",
        "--exp_root",
        str(root),
        "--augment",
        "True",
        "--train_random_crop",
        "True",
        "--crop_s",
        str(CROP_S),
        "--cache_views",
        "3",
        "--batch_size",
        "8",
    ]
    teacher = root / "teacher"
    recipe_train.main(
        [
            str(HP / "common.yaml"),
            str(HP / "student/xvector_small.yaml"),
            str(HP / "kd/none.yaml"),
            *common,
            "--output_folder",
            str(teacher),
            "--role",
            "teacher",
            "--number_of_epochs",
            "1",
        ]
    )
    kd_args = [
        str(HP / "common.yaml"),
        str(HP / "student/xvector_small.yaml"),
        str(HP / "kd/sp.yaml"),
        *common,
        "--teacher_folder",
        str(teacher),
        "--teacher_taps",
        "{frames: encoder.blocks.8}",
    ]
    stage3_args = [*kd_args, "--output_folder", str(teacher), "--check_cache", "4"]
    folder = run_cache_stage(stage3_args, recipe_train.dataio_prepare)
    return {"root": root, "kd_args": kd_args, "cache": folder, "train": recipe_train}


def test_student_sees_the_view_the_cached_teacher_saw(exp, tmp_path, monkeypatch):
    """Each KD batch: the live teacher on the student's (cropped, masked) input == cached."""
    cache = TeacherCache(exp["cache"])
    assert cache.n_views == 3 and sorted(cache.names) == ["embedding", "frames", "logits"]
    hparams = load_composed(
        [HP / "common.yaml", HP / "student/xvector_small.yaml", HP / "kd/sp.yaml"],
        {
            "data_folder": str(exp["root"] / "data"),
            "output_folder": str(tmp_path / "s"),
            "n_classes": 10,
            "num_workers": 0,
            "exp_root": str(exp["root"]),
            "augment": True,
            "train_random_crop": True,
            "crop_s": CROP_S,
            "cache_views": 3,
            "batch_size": 8,
            "teacher_folder": str(exp["root"] / "teacher"),
            "number_of_epochs": 3,
            "teacher_taps": {"frames": "encoder.blocks.8"},
            "use_teacher_cache": True,
        },
    )
    teacher = load_teacher(hparams)
    assert teacher_cache_folder(hparams, teacher) == exp["cache"]
    datasets = exp["train"].dataio_prepare(hparams)
    hparams["view_replay"].attach(datasets["train"], cache)
    brain = exp["train"].make_brain(hparams, {"device": "cpu", "noprogressbar": True}, None, cache)
    checked, views = [], set()
    original = ClassificationBrain.teacher_forward

    def checking_teacher_forward(self, ids, feats, lens, placeholder=False, **kwargs):
        cached = original(self, ids, feats, lens, placeholder, **kwargs)
        batch = kwargs["batch"]
        live = teacher(feats, lens)
        for name in ("logits", "embedding", "frames"):
            scale = live[name].abs().max()
            assert (cached[name] - live[name]).abs().max() <= 1e-2 * scale, name
        checked.append(len(ids))
        views.update((utt, int(p[1])) for utt, p in zip(ids, batch.aug_params.data))
        return cached

    monkeypatch.setattr(ClassificationBrain, "teacher_forward", checking_teacher_forward)
    brain.fit(
        hparams["epoch_counter"],
        datasets["train"],
        datasets["valid"],
        train_loader_kwargs=hparams["train_dataloader_options"],
        valid_loader_kwargs=hparams["eval_dataloader_options"],
    )
    assert sum(checked) == 3 * 24  # every training clip of every epoch
    per_clip = {}
    for utt, first_mask in views:
        per_clip.setdefault(utt, set()).add(first_mask)
    assert max(len(masks) for masks in per_clip.values()) > 1, "epochs replay other views"


def test_check_cache_option_fails_loudly_on_a_corrupted_store(exp, recipe_train):
    """Stage 3's ``--check_cache N`` on a finished store whose shard was altered on disk."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    shard = sorted(exp["cache"].glob("shard-*.safetensors"))[0]
    original = shard.read_bytes()
    tensors = load_file(str(shard))
    with safe_open(str(shard), "pt") as handle:
        metadata = handle.metadata()
    try:
        save_file(
            {k: v * 1.5 if v.is_floating_point() else v for k, v in tensors.items()},
            str(shard),
            metadata=metadata,
        )
        args = [*exp["kd_args"], "--output_folder", str(exp["root"] / "teacher")]
        with pytest.raises(CacheMismatchError, match="differs from the live teacher"):
            run_cache_stage([*args, "--check_cache", "24"], recipe_train.dataio_prepare)
    finally:
        shard.write_bytes(original)


def test_mixup_from_the_cache_mixes_targets_like_inputs(exp, tmp_path, recipe_train):
    out = tmp_path / "mixup"
    recipe_train.main(
        [
            *exp["kd_args"],
            "--output_folder",
            str(out),
            "--number_of_epochs",
            "1",
            "--use_teacher_cache",
            "True",
            "--mixup_alpha",
            "0.4",
        ]
    )
    stats = json.loads((out / "history.json").read_text())[0]["stats"]
    assert stats["kd_sp"] > 0 and torch.isfinite(torch.tensor(stats["loss"]))


def test_transforms_that_cannot_be_replayed_refuse_the_cache(exp, tmp_path, recipe_train):
    with pytest.raises(ValueError, match=r"speed_perturb.*--use_cache false"):
        recipe_train.main(
            [
                *exp["kd_args"],
                "--output_folder",
                str(tmp_path / "s"),
                "--use_teacher_cache",
                "True",
                "--speed_perturb",
                "True",
            ]
        )
