"""IUSP's defining properties (docs/METHODS.md section 1), on random frame features.

Padded frames change nothing; identical teacher and student features give zero; a time
permutation of both gives the same loss; it is not SP; teacher and student may differ in T and D.
"""

from __future__ import annotations

import pytest
import torch

from kd_modules.losses import IUSP, SimilarityPreserving


def loss(s: torch.Tensor, t: torch.Tensor, lens: torch.Tensor | None = None) -> float:
    return float(IUSP("frames")({"frames": s}, {"frames": t}, lens))


@pytest.fixture
def frames() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.randn(3, 8, 5), torch.randn(3, 8, 12), torch.tensor([1.0, 0.75, 0.5])


def test_padded_frames_change_nothing(frames):
    s, t, lens = frames
    reference = loss(s, t, lens)
    s2, t2 = s.clone(), t.clone()
    s2[1, 6:], t2[1, 6:] = 1e3, -7.0  # utterance 1 has 6 valid frames of 8
    s2[2, 4:], t2[2, 4:] = torch.randn(4, 5) * 50, torch.randn(4, 12)
    assert loss(s2, t2, lens) == pytest.approx(reference, rel=1e-6)
    # and the same as the utterances alone, unpadded
    alone = [loss(s[n : n + 1, :k], t[n : n + 1, :k]) for n, k in enumerate((8, 6, 4))]
    assert reference == pytest.approx(sum(alone) / 3, rel=1e-5)


def test_identical_features_give_zero(frames):
    s, _, lens = frames
    assert loss(s, s.clone(), lens) == pytest.approx(0.0, abs=1e-7)
    assert loss(s, 3.0 * s, lens) == pytest.approx(0.0, abs=1e-7)  # rescaled: same G


def test_a_time_permutation_of_both_gives_the_same_loss(frames):
    s, t, _ = frames
    order = torch.randperm(8)
    assert loss(s[:, order], t[:, order]) == pytest.approx(loss(s, t), rel=1e-5)


def test_it_differs_from_sp_on_the_same_tensors(frames):
    s, t, lens = frames
    sp = float(SimilarityPreserving("frames")({"frames": s}, {"frames": t}, lens))
    assert loss(s, t, lens) != pytest.approx(sp, rel=1e-3)
    # SP sees a batch of one as always matching (its 1x1 G is 1); IUSP compares the frames
    one_s, one_t = s[:1], t[:1]
    assert float(SimilarityPreserving("frames")({"frames": one_s}, {"frames": one_t})) == 0.0
    assert loss(one_s, one_t) > 0.01


def test_teacher_and_student_with_different_t_and_d(frames):
    s, _, lens = frames
    t_long = torch.randn(3, 16, 24)  # twice the frames, another width
    value = loss(s, t_long, lens)
    assert value > 0 and torch.isfinite(torch.tensor(value))
    pooled = t_long.reshape(3, 8, 2, 24).mean(2)  # the longer side average-pooled to 8 frames
    assert value == pytest.approx(loss(s, pooled, lens), rel=1e-5)
