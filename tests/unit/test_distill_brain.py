"""The DistillBrain contract, on real FSDD clips: the teacher is frozen, in eval mode, outside the
optimiser and the checkpoints; adapters of KD losses are trained and checkpointed; the teacher
cache reproduces the live teacher; non-finite loss terms stop the run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import speechbrain as sb
import torch
from conftest import RECIPE, write_fsdd_manifests

from kd_modules.brains import ClassificationBrain
from kd_modules.cache import TeacherCache, cache_key, check_deterministic_inputs
from kd_modules.cache_build import build_teacher_cache
from kd_modules.dataio import SkipBadCollate
from kd_modules.hparams import load_composed
from kd_modules.metrics import accuracy
from kd_modules.teacher import Teacher

pytestmark = pytest.mark.slow  # every test uses a teacher trained by the recipe's train.py
HP = RECIPE / "hparams"


def compose(arch: str, method: str, data, out, **overrides) -> dict:
    """Load the recipe's composed YAML for a tiny CPU run."""
    values = {
        "data_folder": str(data),
        "output_folder": str(out),
        "exp_root": str(out.parent),
        "n_classes": 10,
        "number_of_epochs": 1,
        "batch_size": 8,
        "num_workers": 0,
        **overrides,
    }
    files = [HP / "common.yaml", HP / arch, HP / "kd" / f"{method}.yaml"]
    return load_composed(files, values)


def make_brain(hparams: dict, teacher=None, cache=None) -> ClassificationBrain:
    """The recipe's own brain constructor, on the CPU."""
    from recipes.sound_classification.train import make_brain as recipe_make_brain

    return recipe_make_brain(hparams, {"device": "cpu", "noprogressbar": True}, teacher, cache)


def fit(brain: ClassificationBrain, hparams: dict, datasets: dict) -> None:
    brain.fit(
        hparams["epoch_counter"],
        datasets["train"],
        datasets["valid"],
        train_loader_kwargs=hparams["train_dataloader_options"],
        valid_loader_kwargs=hparams["eval_dataloader_options"],
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory, recipe_train):
    """A teacher trained for one epoch by the recipe's own train.py, and the task's manifests."""
    root = tmp_path_factory.mktemp("brain")
    data = write_fsdd_manifests(root / "data", {"train": 3, "valid": 1, "test": 1})
    teacher_dir = root / "exp" / "teacher"
    recipe_train.main(
        [
            str(HP / "common.yaml"),
            str(HP / "teacher" / "xvector_large.yaml"),
            str(HP / "kd" / "none.yaml"),
            "--data_folder",
            str(data),
            "--output_folder",
            str(teacher_dir),
            "--n_classes",
            "10",
            "--number_of_epochs",
            "1",
            "--num_workers",
            "0",
            "--role",
            "teacher",
            "--device",
            "cpu",
            "--noprogressbar",
        ]
    )
    return {"root": root, "data": data, "teacher_dir": teacher_dir, "train": recipe_train}


def test_evaluation_names_the_epochs_the_run_trained_not_the_yaml_default(setup):
    """Stage 7 evaluates without the stage-2 overrides (--teacher_args): the selection note must
    still say how many epochs the teacher trained (1 here), not common.yaml's 15."""
    setup["train"].main(
        [
            str(HP / "common.yaml"),
            str(HP / "teacher" / "xvector_large.yaml"),
            str(HP / "kd" / "none.yaml"),
            "--data_folder",
            str(setup["data"]),
            "--output_folder",
            str(setup["teacher_dir"]),
            "--n_classes",
            "10",
            "--num_workers",
            "0",
            "--role",
            "teacher",
            "--device",
            "cpu",
            "--noprogressbar",
            "--test_only",
        ]
    )
    results = json.loads((setup["teacher_dir"] / "results.json").read_text())
    assert "at epoch 1 of 1 " in results["selection"], results["selection"]


def test_teacher_run_writes_results_schema(setup):
    results = json.loads((setup["teacher_dir"] / "results.json").read_text())
    assert results["role"] == "teacher" and results["method"] == "none"
    assert results["params"] > 1_000_000 and results["macs"] > 0 and results["latency_ms"] > 0
    assert "validation accuracy" in results["selection"]
    # independent recount: the selected checkpoint's argmax over the same test batches
    hparams = compose(
        "teacher/xvector_large.yaml",
        "none",
        setup["data"],
        setup["root"] / "recount",
        batch_size=16,
    )
    teacher = Teacher.from_experiment(setup["teacher_dir"], max_key="accuracy")
    loader = sb.dataio.dataloader.make_dataloader(
        setup["train"].dataio_prepare(hparams)["test"], batch_size=16, collate_fn=SkipBadCollate()
    )
    logits, targets = [], []
    for batch in loader:
        wavs, lens = batch.sig
        feats = hparams["front_end"](wavs, lens)
        logits.append(teacher(feats, lens)["logits"])
        targets.append(batch.label_id.data.squeeze(-1))
    expected = accuracy(torch.cat(logits), torch.cat(targets))
    assert results["metrics"]["accuracy"] == pytest.approx(expected)
    assert (setup["teacher_dir"] / "history.json").is_file()


def test_kd_epoch_leaves_teacher_untouched_and_checkpoints_adapters(setup):
    out = setup["root"] / "exp" / "fitnets"
    hparams = compose(
        "student/xvector_small.yaml",
        "fitnets",
        setup["data"],
        out,
        teacher_folder=str(setup["teacher_dir"]),
    )
    teacher = Teacher.from_experiment(setup["teacher_dir"], taps=hparams["teacher_taps"])
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    teacher.model.train()  # even if someone flips it, the teacher must run in eval mode
    brain = make_brain(hparams, teacher=teacher)
    regressor_before = brain.modules.kd_objective.losses["fitnets"].regressor.weight.clone()
    fit(brain, hparams, setup["train"].dataio_prepare(hparams))

    after = teacher.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "teacher weights changed"
    assert not teacher.model.training, "teacher left in train mode"
    assert all(not p.requires_grad for p in teacher.model.parameters())
    optimised = {id(p) for group in brain.optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in teacher.model.parameters()}
    regressor = brain.modules.kd_objective.losses["fitnets"].regressor.weight
    assert not torch.equal(regressor_before, regressor), "the FitNets regressor was not trained"

    checkpoint = brain.checkpointer.find_checkpoint()
    assert set(checkpoint.paramfiles) >= {"model", "kd_objective"}
    saved = torch.load(checkpoint.paramfiles["kd_objective"])
    assert torch.equal(saved["losses.fitnets.regressor.weight"], regressor.detach())
    for path in checkpoint.paramfiles.values():
        if str(path).endswith(".ckpt") and "model" in str(path):
            state = torch.load(path)
            assert not any("teacher" in key for key in state)
    history = json.loads(Path(hparams["history_file"]).read_text())
    train_stats = [h["stats"] for h in history if h["stage"] == "train"][0]
    assert {"ce", "kd_fitnets", "loss"} <= set(train_stats), "loss terms are logged by name"


def test_cache_reproduces_live_teacher(setup):
    out = setup["root"] / "exp" / "kd_cache"
    hparams = compose(
        "student/xvector_small.yaml",
        "sp",
        setup["data"],
        out,
        teacher_folder=str(setup["teacher_dir"]),
    )
    teacher = Teacher.from_experiment(setup["teacher_dir"], taps=hparams["teacher_taps"])
    datasets = setup["train"].dataio_prepare(hparams)
    replay = hparams["view_replay"]  # no augmentation: one clean view per clip
    assert replay.n_views == 1
    examples = [(item["id"], item["sig"]) for item in datasets["train"]]
    key = cache_key(teacher.fingerprint, hparams["feature_settings"], hparams["teacher_taps"])
    signals = dict(examples)
    folder = build_teacher_cache(
        teacher,
        list(signals),
        signals.__getitem__,
        replay.features,
        replay.make_view,
        out / key,
        {},
        batch_size=4,
    )
    cache = TeacherCache(folder)
    assert len(cache) == len(datasets["train"])
    for utt_id, sig in examples[:3]:
        lens = torch.ones(1)
        live = teacher(hparams["front_end"](sig[None], lens), lens)
        cached = cache.lookup([utt_id])
        assert set(live) == set(cached) == {"logits", "embedding", "frames"}
        for name in live:
            torch.testing.assert_close(cached[name], live[name], atol=1e-2, rtol=1e-2)

    other = dict(hparams["feature_settings"], n_mels=64)
    assert cache_key(teacher.fingerprint, other, hparams["teacher_taps"]) != key
    manifest = setup["data"] / "train.json"
    reprepared = out / "train_reprepared.json"
    reprepared.write_text(json.dumps(dict(list(json.loads(manifest.read_text()).items())[1:])))
    features = hparams["feature_settings"]
    with_manifest = cache_key(teacher.fingerprint, features, {}, manifest)
    assert with_manifest == cache_key(teacher.fingerprint, features, {}, manifest)
    assert with_manifest != cache_key(teacher.fingerprint, features, {}, reprepared)
    with pytest.raises(ValueError, match="train_random_crop"):
        check_deterministic_inputs({"train_random_crop": True})
    with pytest.raises(KeyError, match="not in the teacher cache"):
        cache.lookup(["no_such_clip"])

    replay.attach(datasets["train"], cache)
    brain = make_brain(hparams, cache=cache)  # a KD epoch reading only the cache
    fit(brain, hparams, datasets)
    assert brain.train_stats["kd_sp"] >= 0.0


def test_nonfinite_term_stops_with_its_name(setup):
    out = setup["root"] / "exp" / "nan"
    hparams = compose("student/xvector_small.yaml", "none", setup["data"], out)
    brain = make_brain(hparams)
    with pytest.raises(FloatingPointError, match="'kd_sp' is nan"):
        brain.log_terms(kd_sp=torch.tensor(float("nan")))


def test_kd_losses_without_teacher_refuse_to_train(setup):
    out = setup["root"] / "exp" / "noteacher"
    hparams = compose(
        "student/xvector_small.yaml", "kd", setup["data"], out, teacher_folder="unused"
    )
    brain = make_brain(hparams)
    with pytest.raises(ValueError, match="neither a teacher nor a cache"):
        fit(brain, hparams, setup["train"].dataio_prepare(hparams))


def test_corrupt_clip_is_skipped_and_counted_not_fatal(setup, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "valid", "test"):
        (data / f"{split}.json").write_text((setup["data"] / f"{split}.json").read_text())
    corrupt = tmp_path / "0_broken_99.wav"
    corrupt.write_bytes(b"RIFF\x00\x00garbage, not audio" * 10)
    train = json.loads((data / "train.json").read_text())
    train["0_broken_99"] = {"wav": str(corrupt), "duration": 1.0, "label": "0", "label_id": 0}
    (data / "train.json").write_text(json.dumps(train))
    hparams = compose("student/xvector_small.yaml", "none", data, tmp_path / "exp")
    brain = make_brain(hparams)
    fit(brain, hparams, setup["train"].dataio_prepare(hparams))
    assert brain.train_stats["skipped_clips"] == 1  # counted per stage, the run went on
    history = json.loads(Path(hparams["history_file"]).read_text())
    assert [h["stats"].get("skipped_clips") for h in history] == [1, None]


def test_loading_the_teacher_keeps_the_callers_seeds(setup):
    """The teacher's saved YAML seeds everything with its own seed; the student's must survive."""
    sb.utils.seed.seed_everything(7, verbose=False)
    expected = torch.rand(3)
    sb.utils.seed.seed_everything(7, verbose=False)
    Teacher.from_experiment(setup["teacher_dir"])
    assert os.environ["SB_GLOBAL_SEED"] == "7"
    assert torch.equal(torch.rand(3), expected)


def test_kd_warmup_grows_a_terms_weight_linearly_over_its_epochs():
    """kd_warmup_epochs {dkd: 20}: epoch e weighs DKD by e/20 until epoch 20, others unchanged."""
    from types import SimpleNamespace

    from kd_modules.brains.distill import DistillBrain

    weights = {"dkd": 2.0, "kd": 1.0}
    for epoch, expected in ((1, 0.1), (10, 1.0), (20, 2.0), (35, 2.0)):
        brain = SimpleNamespace(hparams=SimpleNamespace(kd_warmup_epochs={"dkd": 20}), epoch=epoch)
        assert DistillBrain.warmed_up(brain, weights) == {"dkd": expected, "kd": 1.0}
    brain = SimpleNamespace(hparams=SimpleNamespace(), epoch=1)
    assert DistillBrain.warmed_up(brain, weights) == weights
