"""A teacher on its own front end (a hub-format ECAPA on 80-band fbank, waveforms in) through the
sound-classification recipe's stage 3 and Brain, on real FSDD clips: the replayed view is the
crop of the waveform (both sides) and the masks of the student's features (student only), so
every KD batch's cached teacher outputs equal the live teacher on the student's view; its tap
points come by role from hparams/teacher/hub_ecapa.yaml; the run record names its source."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import RECIPE, SPEAKER_VERIFICATION
from hub_folders import DIGITS, write_hub_folder
from test_replay_kd import CROP_S, long_clips

from kd_modules.brains import ClassificationBrain
from kd_modules.cache import TeacherCache
from kd_modules.hparams import load_composed
from kd_modules.hub.sources import load_any_teacher
from kd_modules.provenance import run_record
from kd_modules.stages.cache import run_cache_stage
from kd_modules.teacher import teacher_cache_folder

pytestmark = pytest.mark.slow  # stage 3 and a KD fit through the recipe
HP = RECIPE / "hparams"
HUB_YAML = SPEAKER_VERIFICATION / "hparams" / "teacher" / "hub_ecapa.yaml"


@pytest.fixture(scope="module")
def hub_exp(tmp_path_factory, recipe_train):
    root = tmp_path_factory.mktemp("hubcache")
    data = root / "data" / "fold1"
    data.mkdir(parents=True)
    (root / "data" / "labels.json").write_text(json.dumps(DIGITS))
    clips = long_clips(28)
    for split, part in (("train", clips[:16]), ("valid", clips[16:22]), ("test", clips[22:])):
        entries = {
            c.stem: {"wav": str(c), "duration": 0.5, "label_id": int(c.stem[0]), "label": c.stem[0]}
            for c in part
        }
        (data / f"{split}.json").write_text(json.dumps(entries))
    write_hub_folder(root / "hub", DIGITS)
    overrides = {
        "data_folder": str(data),
        "n_classes": 10,
        "num_workers": 0,
        "exp_root": str(root),
        "augment": True,
        "train_random_crop": True,
        "crop_s": CROP_S,
        "cache_views": 3,
        "batch_size": 8,
        "teacher_folder": str(root / "hub"),
        "teacher_source": str(root / "hub"),
        "teacher_source_yaml": str(HUB_YAML),
    }
    argv = [str(HP / "common.yaml"), str(HP / "student/xvector_small.yaml"), str(HP / "kd/sp.yaml")]
    for key, value in overrides.items():
        argv += [f"--{key}", str(value)]
    argv += ["--device", "cpu", "--noprogressbar"]
    stage3 = [*argv, "--output_folder", str(root / "teacher"), "--check_cache", "4"]
    folder = run_cache_stage(stage3, recipe_train.dataio_prepare)
    return {"root": root, "overrides": overrides, "cache": folder}


def test_cached_views_equal_the_live_teacher_on_the_students_views(
    hub_exp, tmp_path, monkeypatch, recipe_train
):
    cache = TeacherCache(hub_exp["cache"])
    assert sorted(cache.names) == ["cosine", "embedding", "frames", "logits"]
    hparams = load_composed(
        [HP / "common.yaml", HP / "student/xvector_small.yaml", HP / "kd/sp.yaml"],
        {
            **hub_exp["overrides"],
            "output_folder": str(tmp_path / "s"),
            "number_of_epochs": 2,
            "use_teacher_cache": True,
        },
    )
    teacher = load_any_teacher(hparams)
    assert teacher.own_front_end and teacher_cache_folder(hparams, teacher) == hub_exp["cache"]
    record = run_record(hparams, teacher, ("train", "valid", "test"))["teacher_source"]
    assert record["source"] == str(hub_exp["root"] / "hub")
    assert record["trust_teacher_code"] is False and "embedding_model.ckpt" in record["sha256"]
    datasets = recipe_train.dataio_prepare(hparams)
    hparams["view_replay"].attach(datasets["train"], cache)
    brain = recipe_train.make_brain(hparams, {"device": "cpu", "noprogressbar": True}, None, cache)
    checked, masked = [], []
    original = ClassificationBrain.teacher_forward

    def checking_teacher_forward(self, ids, feats, lens, placeholder=False, **kwargs):
        cached = original(self, ids, feats, lens, placeholder, **kwargs)
        wavs, wav_lens = self.view_waveforms  # the student's view: its crop of the waveforms
        assert wavs.dim() == 2 and feats.dim() == 3
        live = teacher(wavs, wav_lens)
        for name in ("logits", "embedding", "frames"):
            scale = live[name].abs().max()
            assert (cached[name] - live[name]).abs().max() <= 1e-2 * scale, name
        checked.append(len(ids))
        masked.append(int(kwargs["batch"].aug_params.data[:, 1:].abs().sum()))
        return cached

    monkeypatch.setattr(ClassificationBrain, "teacher_forward", checking_teacher_forward)
    brain.fit(
        hparams["epoch_counter"],
        datasets["train"],
        datasets["valid"],
        train_loader_kwargs=hparams["train_dataloader_options"],
        valid_loader_kwargs=hparams["eval_dataloader_options"],
    )
    assert sum(checked) == 2 * 16 and sum(masked) > 0  # every clip, student views masked
    history = json.loads((tmp_path / "s" / "history.json").read_text())
    assert all(torch.isfinite(torch.tensor(e["kd_sp"])) for e in history if "kd_sp" in e)


def test_the_live_teacher_gets_the_cropped_waveforms(hub_exp, tmp_path, monkeypatch, recipe_train):
    """Without a cache the KD run hands the teacher its view's waveforms ``(B, S)``, cropped."""
    hparams = load_composed(
        [HP / "common.yaml", HP / "student/xvector_small.yaml", HP / "kd/sp.yaml"],
        {**hub_exp["overrides"], "output_folder": str(tmp_path / "s"), "number_of_epochs": 1},
    )
    teacher = load_any_teacher(hparams)
    seen = []
    call = type(teacher).__call__

    def recording_call(self, wavs, lens=None, targets=None):
        seen.append(tuple(wavs.shape))
        return call(self, wavs, lens, targets)

    monkeypatch.setattr(type(teacher), "__call__", recording_call)
    datasets = recipe_train.dataio_prepare(hparams)
    brain = recipe_train.make_brain(hparams, {"device": "cpu", "noprogressbar": True}, teacher)
    brain.fit(
        hparams["epoch_counter"],
        datasets["train"],
        datasets["valid"],
        train_loader_kwargs=hparams["train_dataloader_options"],
        valid_loader_kwargs=hparams["eval_dataloader_options"],
    )
    crop = round(CROP_S * hparams["sample_rate"])
    assert sum(shape[0] for shape in seen) == 16 and all(s[1:] == (crop,) for s in seen)


def test_mixup_mixes_the_live_teachers_outputs(hub_exp, tmp_path, monkeypatch, recipe_train):
    """With mixup the live teacher on its own front end sees the unmixed view, and its outputs
    are mixed with the batch's λ and pairing, as cached outputs are."""
    hparams = load_composed(
        [HP / "common.yaml", HP / "student/xvector_small.yaml", HP / "kd/sp.yaml"],
        {
            **hub_exp["overrides"],
            "output_folder": str(tmp_path / "s"),
            "number_of_epochs": 1,
            "mixup_alpha": 0.4,
        },
    )
    teacher = load_any_teacher(hparams)
    original = ClassificationBrain.teacher_forward
    checked = []

    def checking_teacher_forward(self, ids, feats, lens, placeholder=False, **kwargs):
        got = original(self, ids, feats, lens, placeholder, **kwargs)
        plain = teacher(*self.view_waveforms)
        mixed = kwargs["mixing"].outputs(plain)
        assert torch.allclose(got["embedding"], mixed["embedding"], atol=1e-6)
        checked.append(not torch.allclose(got["embedding"], plain["embedding"], atol=1e-4))
        return got

    monkeypatch.setattr(ClassificationBrain, "teacher_forward", checking_teacher_forward)
    datasets = recipe_train.dataio_prepare(hparams)
    brain = recipe_train.make_brain(hparams, {"device": "cpu", "noprogressbar": True}, teacher)
    brain.fit(
        hparams["epoch_counter"],
        datasets["train"],
        datasets["valid"],
        train_loader_kwargs=hparams["train_dataloader_options"],
        valid_loader_kwargs=hparams["eval_dataloader_options"],
    )
    assert checked and any(checked)  # some batch was mixed
