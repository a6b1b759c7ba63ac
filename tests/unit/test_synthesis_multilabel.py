"""Data-free KD against a tagger: multi-hot tag sets, BCE in the inversion, the pool and the
diversity measure on tag sets (kd_modules.synthesis; the tagging recipe's stage 6 uses them)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kd_modules.models import CNNTagger
from kd_modules.synthesis import (
    DeepInversion,
    FrameGenerator,
    SyntheticPool,
    embedding_diversity,
    inversion_task_loss,
    tag_set_plan,
)

N_MELS, N_OUTPUTS = 16, 5


def test_multilabel_task_loss_is_bce_with_logits_known_value():
    logits = torch.tensor([[0.0, 2.0]])
    targets = torch.tensor([[1, 0]])  # -log σ(0) = ln 2, -log(1 - σ(2)) = ln(1 + e²)
    expected = (math.log(2.0) + math.log(1.0 + math.e**2)) / 2
    assert float(inversion_task_loss(logits, targets)) == pytest.approx(expected, rel=1e-6)


def test_single_label_task_loss_stays_cross_entropy():
    logits = torch.tensor([[0.0, math.log(3.0)]])
    assert float(inversion_task_loss(logits, torch.tensor([1]))) == pytest.approx(-math.log(0.75))


def tagger() -> CNNTagger:
    torch.manual_seed(0)
    return CNNTagger(n_mels=N_MELS, n_outputs=N_OUTPUTS, channels=[4, 8])


class MeanTagger(nn.Module):
    """A linear tagger on the time-mean of the frames, behind a BatchNorm (R_BN hooks it)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.norm = nn.BatchNorm1d(N_MELS)
        self.head = nn.Linear(N_MELS, N_OUTPUTS)

    def forward(self, feats: torch.Tensor, lens=None) -> dict:
        return {"logits": self.head(self.norm(feats.transpose(1, 2)).mean(dim=2))}


def test_multilabel_inversion_optimises_bce_towards_the_tag_sets():
    model = MeanTagger().eval()
    targets = torch.tensor([[1, 0, 0, 1, 0], [0, 1, 1, 0, 1]])
    priors = {"lambda_bn": 0.0, "lambda_tv": 0.0, "lambda_l2": 0.0}  # the BCE term alone
    synthesizer = DeepInversion(
        model, N_MELS, N_OUTPUTS, steps=50, lr=0.5, center_time=False, multi_label=True, **priors
    )
    torch.manual_seed(1)
    x = synthesizer.synthesize(targets, frames=20)
    assert x.shape == (2, 20, N_MELS)
    assert "bce" in synthesizer.history and "ce" not in synthesizer.history
    bce = synthesizer.history["bce"]
    assert bce[-1] < 0.5 * bce[0]  # the teacher moves towards the sampled tag sets
    with torch.no_grad():
        scores = model(x, None)["logits"].sigmoid()
    assert bool(((scores > 0.5).long() == targets).all())
    assert synthesizer.settings()["multi_label"] is True
    assert "multi_label" not in DeepInversion(model, N_MELS, N_OUTPUTS).settings()  # as before


def test_targets_of_the_other_kind_are_refused_in_one_line():
    multi = DeepInversion(tagger(), N_MELS, N_OUTPUTS, steps=1, multi_label=True)
    with pytest.raises(ValueError, match=r"multi_label=True\) synthesises multi-hot tag sets"):
        multi.synthesize(torch.tensor([0, 1]), frames=8)
    single = DeepInversion(tagger(), N_MELS, N_OUTPUTS, steps=1)
    with pytest.raises(ValueError, match=r"synthesises classes \(B,\)"):
        single.synthesize(torch.tensor([[1, 0, 0, 0, 0]]), frames=8)


def test_generator_conditions_on_the_sum_of_the_tags_embeddings():
    generator = FrameGenerator(N_OUTPUTS, N_MELS, z_dim=8, channels=8, layers=1)
    z = torch.randn(1, 6, 8)
    both = generator(z, torch.tensor([[1, 0, 1, 0, 0]]))
    with torch.no_grad():
        h = z + (generator.embed.weight[0] + generator.embed.weight[2])
        expected = generator.net(h.transpose(1, 2)).transpose(1, 2)
    assert torch.allclose(both, expected, atol=1e-6)


def test_tag_set_plan_deals_leading_tags_and_switches_implied_outputs_on():
    implies = {0: [3], 1: [3], 2: [4]}  # fine tags 0-2; coarse outputs 3 (tags 0, 1) and 4 (2)
    options = {"max_tags_per_clip": 2, "candidates": [0, 1, 2], "implies": implies}
    plan = tag_set_plan(5, 4, 5, 10, 20, seed=3, **options)
    sets = [t for batch in plan for t in batch.targets]
    assert len(sets) == 12 and all(len(t) == 5 for t in sets)
    assert [len(b.targets) for b in plan] == [5, 5, 2]
    for clip, tags in enumerate(sets):
        assert tags[clip % 3] == 1  # the leading tag, round-robin over the candidates
        assert 1 <= sum(tags[:3]) <= 2
        assert tags[3] == int(tags[0] or tags[1]) and tags[4] == tags[2]
    assert any(sum(t[:3]) == 2 for t in sets) and any(sum(t[:3]) == 1 for t in sets)
    assert plan == tag_set_plan(5, 4, 5, 10, 20, seed=3, **options)  # seeded, reproducible
    assert all(10 <= batch.frames <= 20 for batch in plan)


def test_pool_keeps_multi_hot_targets(tmp_path):
    plan = tag_set_plan(3, 1, 3, 4, 4, seed=1, max_tags_per_clip=2)
    pool = SyntheticPool(tmp_path)
    pool.write_batch(plan[0], torch.zeros(3, 4, N_MELS))
    manifest = pool.merge(plan)
    assert [entry["targets"] for entry in manifest.values()] == [list(t) for t in plan[0].targets]
    assert all("label_id" not in entry for entry in manifest.values())


def test_diversity_groups_a_tag_sets_samples_by_tag():
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    tags = torch.tensor([[1, 0], [1, 1], [0, 1]])  # tag 0: samples 0, 1; tag 1: samples 1, 2
    assert embedding_diversity(e, tags) == pytest.approx(1.0)  # each pair orthogonal: 1 − 0
    same = torch.tensor([[1, 0], [0, 1], [1, 0]])  # tag 0: samples 0 and 2, one direction
    assert embedding_diversity(e, same) == pytest.approx(0.0)
