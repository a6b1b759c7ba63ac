"""IML-KD's attributed teacher output on every task (kd_modules.teacher): the true class's logit
of a classifier, the summed sigmoid scores of a tagger's true tags, and the targets the cache
stage reads (a manifest field, or the dataset's own item such as a tagger's 0/1 targets).

Integrated gradients on real clips (FSDD, tests/samples) through a small random CNN tagger.
"""

from __future__ import annotations

import pytest
import torch
from conftest import FSDD_CLIPS
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.lobes.features import Fbank
from torch import Tensor

from kd_modules.attribution import IntegratedInput
from kd_modules.dataio import read_audio
from kd_modules.models import CNNTagger
from kd_modules.teacher import IntegratedTeacher, Teacher, attributed_score, teacher_targets

N_TAGS = 5


@pytest.fixture(scope="module")
def feats() -> Tensor:
    """(3, 41, 64) mean-normalised log-Mel of the first 0.4 s of three real clips."""
    clips = sorted(FSDD_CLIPS.glob("*.flac"))[:3]
    wavs = torch.stack([read_audio(clip, 16000)[:6400] for clip in clips])
    fbank = Fbank(n_mels=64)(wavs)
    return fbank - fbank.mean(1, keepdim=True)


@pytest.fixture(scope="module")
def tagger() -> Teacher:
    """A small frozen CNN tagger (5 sigmoid outputs), random weights."""
    torch.manual_seed(0)
    return Teacher(CNNTagger(n_mels=64, n_outputs=N_TAGS, channels=[8, 16], dropout=0.0))


def tagger_teacher(tagger: Teacher, steps: int = 8) -> IntegratedTeacher:
    """Whole-clip segments (10 s ≫ 0.4 s): one map per clip, IG of the clip itself."""
    integrated = IntegratedInput(durations_s=(10.0,), steps=steps, rule="gausslegendre")
    return IntegratedTeacher(tagger, integrated, score_key="sigmoid")


def test_sigmoid_score_sums_the_true_tags_and_logits_gather_the_true_class():
    z = torch.tensor([[0.0, 2.0, -1.0], [1.0, -3.0, 0.5]])
    tags = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    expected = torch.tensor([0.5 + torch.sigmoid(torch.tensor(2.0)).item(), 0.0])
    torch.testing.assert_close(attributed_score({"logits": z}, "sigmoid", tags), expected)
    classes = torch.tensor([1, 2])
    torch.testing.assert_close(
        attributed_score({"logits": z}, "logits", classes), torch.tensor([2.0, 0.5])
    )


@torch.no_grad()
def test_ig_of_the_tags_score_is_linear_in_the_tags_and_complete(feats, tagger):
    """IG is linear in F: the map of tags {0, 3} is the sum of the maps of {0} and {3}; a clip
    with no true tag has a zero map; Σ A ≈ F(x) − F(0) (completeness, 64 Gauss-Legendre nodes)."""
    teacher, lens = tagger_teacher(tagger, steps=64), torch.ones(3)
    one_hot = torch.eye(N_TAGS)
    both = one_hot[[0, 0, 0]] + one_hot[[3, 3, 3]]
    [a_both] = teacher.maps(feats, lens, both)
    [a_0] = teacher.maps(feats, lens, one_hot[[0, 0, 0]])
    [a_3] = teacher.maps(feats, lens, one_hot[[3, 3, 3]])
    torch.testing.assert_close(a_both, a_0 + a_3, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(a_0, a_3, atol=1e-4)  # the tag chosen changes the map
    [a_none] = teacher.maps(feats, lens, torch.zeros(3, N_TAGS))
    assert a_none.shape == feats.shape and not a_none.any()

    def score(x: Tensor) -> Tensor:
        return attributed_score(tagger.model(x, torch.ones(3)), "sigmoid", both)

    delta = score(feats) - score(torch.zeros_like(feats))
    assert (delta.abs() > 1e-3).all()
    torch.testing.assert_close(a_both.sum((1, 2)), delta, rtol=0.05, atol=1e-4)


@torch.no_grad()
def test_integrated_tagger_teacher_gives_its_outputs_on_x_tilde(feats, tagger):
    """The teacher call with (B, K) tags: ``ig_weight`` (B, T, F) in [0, 1], the outputs on
    x̃; a clip without a tag keeps x̃ = x, so its outputs are the plain teacher's."""
    teacher, lens = tagger_teacher(tagger), torch.ones(3)
    tags = torch.tensor([[1.0, 0, 0, 1, 0], [0, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
    out = teacher(feats, lens, tags)
    weight = out["ig_weight"]
    assert weight.shape == feats.shape and 0 <= weight.min() and weight.amax((1, 2))[:2].eq(1).all()
    assert not weight[2].any()
    plain = tagger(feats, lens)["logits"]
    torch.testing.assert_close(out["logits"][2], plain[2])
    assert not torch.allclose(out["logits"][:2], plain[:2])


def test_teacher_targets_read_a_manifest_field_or_the_datasets_item():
    """The cache stage's targets: an int field (classes, speakers) as read, else the dataset's
    dynamic item of that name (a tagger's 0/1 targets (K,)), stacked in the ids' order."""
    data = {
        "a": {"label_id": 2, "votes": [0.0, 0.6, 1.0]},
        "b": {"label_id": 0, "votes": [1, 0, 0]},
    }
    dataset = DynamicItemDataset(data)
    dataset.add_dynamic_item(
        lambda votes: torch.tensor([float(v > 0.5) for v in votes]),
        takes=["votes"],
        provides="targets",
    )
    dataset.set_output_keys(["id"])
    classes = teacher_targets({"teacher_targets": "label_id"}, dataset)
    assert classes(["b", "a"]).tolist() == [0, 2]
    tags = teacher_targets({"teacher_targets": "targets"}, dataset)
    assert tags(["b", "a"]).tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]
    assert dataset[0] == {"id": "a"}  # the dataset's own output keys are restored
    assert teacher_targets({}, dataset) is None
