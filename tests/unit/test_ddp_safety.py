"""DDP safety without torchrun, on real FSDD clips.

- The DDP training sampler follows the run's seed: SpeechBrain builds it when ``distributed_launch``
  is set; here a brain is given that state (rank, and a world size of 2) without a process group.
- A batch whose clips are all unreadable (a truncated real clip, a missing file) becomes a zero
  placeholder on which the brain runs its full forward (student, teacher or cache, KD objective):
  the loss is exactly 0, every trained parameter gets a zero gradient, and neither the logged
  terms, the accuracy, the skipped-clip count nor BatchNorm's running statistics are polluted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import speechbrain as sb
import torch
import torch.nn.functional as F
from conftest import FSDD_CLIPS, RECIPE, write_fsdd_manifests
from speechbrain.dataio.dataloader import make_dataloader
from speechbrain.dataio.dataset import DynamicItemDataset
from torch import nn

from kd_modules.brains.distill import DistillBrain
from kd_modules.cache import TeacherCache
from kd_modules.cache_build import build_teacher_cache
from kd_modules.dataio import AudioReadError, SkipBadCollate, read_audio
from kd_modules.hparams import load_composed
from kd_modules.teacher import Teacher, resolve_tap_points

HP = RECIPE / "hparams"
RUN_OPTS = {"device": "cpu", "noprogressbar": True}


# ----- item: the DDP sampler honours the seed ------------------------------------------------
def ddp_order(dataset, seed: int | None, rank: int, epoch: int = 1) -> list[str]:
    """The ids rank ``rank`` of 2 trains on in ``epoch``, with SpeechBrain's DDP sampler."""
    hparams = {} if seed is None else {"seed": seed}
    brain = DistillBrain(modules={"model": nn.Linear(1, 1)}, hparams=hparams, run_opts=RUN_OPTS)
    brain.distributed_launch, brain.rank = True, rank
    loader = brain.make_dataloader(dataset, sb.Stage.TRAIN, batch_size=4, shuffle=True)
    brain.train_sampler.set_epoch(epoch)  # as Brain._fit_train does
    return [utt for batch in loader for utt in batch.id]


@pytest.fixture
def ids_dataset(fsdd_manifests, monkeypatch) -> DynamicItemDataset:
    """The 40 training clips' ids, in a world of 2 ranks (no process group needed)."""
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    return DynamicItemDataset.from_json(fsdd_manifests / "train.json", output_keys=["id"])


def test_ddp_sampler_follows_the_seed_and_shards_disjointly(ids_dataset):
    shards = {seed: [ddp_order(ids_dataset, seed, rank) for rank in (0, 1)] for seed in (1, 2)}
    for rank0, rank1 in shards.values():
        assert not set(rank0) & set(rank1)
        assert sorted(rank0 + rank1) == sorted(ids_dataset.data_ids)
    assert shards[1][0] != shards[2][0], "two seeds gave the same data order"
    assert ddp_order(ids_dataset, 1, rank=0) == shards[1][0], "same seed, other order"
    assert ddp_order(ids_dataset, 1, rank=0, epoch=2) != shards[1][0], "no reshuffle per epoch"


def test_ddp_sampler_falls_back_on_speechbrains_seed(ids_dataset, monkeypatch):
    monkeypatch.setenv("SB_GLOBAL_SEED", "2")
    order = ddp_order(ids_dataset, None, rank=1)
    assert order == ddp_order(ids_dataset, 2, rank=1) != ddp_order(ids_dataset, 1, rank=1)


# ----- item: a batch of unreadable clips keeps the ranks in step ------------------------------
def compose(arch: str, method: str, data: Path, out: Path) -> dict:
    """The recipe's composed YAML for a tiny CPU run."""
    values = {
        "data_folder": str(data),
        "output_folder": str(out),
        "exp_root": str(out.parent),
        "n_classes": 10,
        "num_workers": 0,
        "teacher_folder": "unused",
    }
    return load_composed([HP / "common.yaml", HP / arch, HP / "kd" / f"{method}.yaml"], values)


@pytest.fixture(scope="module")
def bad_setup(tmp_path_factory, recipe_train) -> dict:
    """FitNets hparams, a (random) live teacher, and batches of two real or two bad clips."""
    root = tmp_path_factory.mktemp("placeholder")
    good = write_fsdd_manifests(root / "good", {"train": 1, "valid": 1, "test": 1})
    real = sorted(FSDD_CLIPS.glob("*.flac"))[0]
    corrupt = root / "0_truncated.flac"
    corrupt.write_bytes(real.read_bytes()[: real.stat().st_size // 2])
    with pytest.raises(AudioReadError, match="corrupt"):
        read_audio(corrupt)
    bad = {
        "0_truncated": {"wav": str(corrupt), "label_id": 0},
        "1_missing": {"wav": str(root / "1_missing.flac"), "label_id": 1},
    }
    (root / "bad").mkdir()
    (root / "bad" / "train.json").write_text(json.dumps(bad))

    hparams = compose("student/xvector_small.yaml", "fitnets", good, root / "exp" / "student")
    teacher_hparams = compose("teacher/xvector_large.yaml", "none", good, root / "exp" / "t")
    taps = resolve_tap_points(hparams["teacher_taps"], teacher_hparams["tap_points"], root)
    teacher = Teacher(teacher_hparams["model"], taps=taps)

    def batches(folder: Path, batch_size: int = 2) -> list:
        dataset = recipe_train.dataio_prepare(
            {**hparams, "train_annotation": folder / "train.json"}
        )
        return list(
            make_dataloader(dataset["train"], batch_size=batch_size, collate_fn=SkipBadCollate())
        )

    return {
        "root": root,
        "hparams": hparams,
        "teacher": teacher,
        "train": recipe_train,
        "good": batches(good),
        "bad": batches(root / "bad"),
        "good_single": batches(good, batch_size=1),
        "bad_single": batches(root / "bad", batch_size=1),
    }


def make_brain(setup: dict, cache: TeacherCache | None = None):
    """The recipe's FitNets brain (live teacher, or the cache instead), in train mode."""
    teacher = None if cache is not None else setup["teacher"]
    brain = setup["train"].make_brain(setup["hparams"], RUN_OPTS, teacher, cache, checkpoints=False)
    brain.modules.train()
    return brain


def trained(brain) -> list[tuple[str, nn.Parameter]]:
    """Every parameter the optimiser would train: the student's and the FitNets regressor's."""
    return [*brain.modules.model.named_parameters(), *brain.modules.kd_objective.named_parameters()]


def step(brain, batch, stage=sb.Stage.TRAIN) -> tuple[torch.Tensor, tuple]:
    """One forward (and, in training, backward) pass as SpeechBrain's fit_batch runs it."""
    brain.modules.zero_grad(set_to_none=True)
    predictions = brain.compute_forward(batch, stage)
    loss = brain.compute_objectives(predictions, batch, stage)
    if stage == sb.Stage.TRAIN:
        loss.backward()
    return loss, predictions


def assert_placeholder_step(brain, batch) -> tuple:
    """Loss exactly 0 from a full forward: a zero gradient on every trained parameter, no term,
    no change to the running statistics; only the skipped clips are counted. -> predictions"""
    assert batch.placeholder and batch.skipped == 2 and not batch.sig.data.any()
    buffers = {k: v.clone() for k, v in brain.modules.model.state_dict().items() if "running" in k}
    loss, predictions = step(brain, batch)
    assert loss.item() == 0.0
    for name, param in trained(brain):
        assert param.grad is not None, f"{name} took no part in the forward"
        assert not param.grad.any(), f"{name} got a non-zero gradient"
    state = brain.modules.model.state_dict()
    assert buffers and all(torch.equal(state[k], v) for k, v in buffers.items())
    assert brain.stage_log.means() == {} and brain.skipped_clips == batch.skipped
    return predictions


def test_all_bad_batch_is_a_placeholder_with_zero_loss_and_zero_gradients(bad_setup):
    brain = make_brain(bad_setup)
    brain.on_stage_start(sb.Stage.TRAIN, 1)
    [bad] = bad_setup["bad"]
    assert bad.skipped_ids == ["0_truncated", "1_missing"]
    assert_placeholder_step(brain, bad)

    real = bad_setup["good"][0]
    loss, (student, *_) = step(brain, real)
    assert loss.item() > 0.0 and any(p.grad.any() for _, p in trained(brain))
    ce = F.cross_entropy(student["logits"], real.label_id.data.reshape(-1))
    means = brain.stage_log.means()
    assert set(means) == {"ce", "kd_fitnets"} and means["ce"] == pytest.approx(ce.item())
    assert brain.stage_log.counts == {"ce": 1, "kd_fitnets": 1}
    assert brain.skipped_clips == 2


def test_placeholder_adds_nothing_to_the_accuracy(bad_setup):
    brain = make_brain(bad_setup)
    brain.modules.eval()
    brain.on_stage_start(sb.Stage.VALID, 1)
    with torch.no_grad():
        loss, _ = step(brain, bad_setup["bad"][0], sb.Stage.VALID)
        assert loss.item() == 0.0 and brain.accuracy.total == 0
        step(brain, bad_setup["good"][0], sb.Stage.VALID)
    assert brain.accuracy.total == 2 and brain.stage_log.means().keys() == {"ce"}


def test_placeholder_with_the_teacher_cache_uses_zeros_not_the_missing_ids(bad_setup):
    hparams = bad_setup["hparams"]
    replay = hparams["view_replay"]
    examples = [
        (batch.id[0], batch.sig.data[0])
        for batch in bad_setup["good_single"] + bad_setup["bad_single"]
        if not batch.placeholder
    ] + [("0_truncated", torch.zeros(0)), ("1_missing", torch.zeros(0))]
    signals = dict(examples)
    folder = build_teacher_cache(
        bad_setup["teacher"],
        list(signals),
        signals.__getitem__,
        replay.features,
        replay.make_view,
        bad_setup["root"] / "cache",
        {},
    )
    cache = TeacherCache(folder)
    assert len(cache) == len(bad_setup["good_single"])  # the bad clips are not cached
    assert not {"0_truncated", "1_missing"} & set(cache.index)
    assert cache.unreadable("0_truncated") and cache.unreadable("1_missing")

    brain = make_brain(bad_setup, cache=cache)
    brain.on_stage_start(sb.Stage.TRAIN, 1)
    _, teacher, *_ = assert_placeholder_step(brain, bad_setup["bad"][0])
    some = cache.example()
    assert {name: tuple(value.shape) for name, value in teacher.items()} == {
        name: (2, *value.shape) for name, value in some.items()
    }
    assert not any(value.any() for value in teacher.values())
