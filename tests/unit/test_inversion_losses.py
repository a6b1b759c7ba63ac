"""Inversion losses: InfoNCE hand values and invariances, TV / L2 priors, the BatchNorm gap."""

import math

import pytest
import torch

from kd_modules.losses import (
    InfoNCE,
    bn_statistics_gap,
    info_nce,
    l2_prior,
    total_variation,
)

E = math.e


def test_info_nce_hand_value_two_orthogonal_samples():
    # z_a = z_b = identity rows, tau 1: each anchor sees logits [1, 0] with target 0.
    z = torch.eye(2)
    expected = math.log(1 + math.exp(-1))  # -log(e / (e + 1))
    assert info_nce(z, z.clone(), tau=1.0).item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_hand_value_with_temperature_and_bank():
    # tau 0.5 doubles the logits; the bank row (-1, 0) adds logit -1/0.5 for anchor 0 and 0 for 1.
    z, bank = torch.eye(2), torch.tensor([[-1.0, 0.0]])
    row0 = -math.log(E**2 / (E**2 + 1 + E**-2))  # logits [2, 0, -2]
    row1 = -math.log(E**2 / (1 + E**2 + 1))  # logits [0, 2, 0]
    value = info_nce(z, z.clone(), tau=0.5, bank=bank).item()
    assert value == pytest.approx((row0 + row1) / 2, rel=1e-6)  # both directions are the same


def test_info_nce_is_symmetric_in_the_views():
    a, b = torch.randn(6, 8), torch.randn(6, 8)
    assert info_nce(a, b).item() == pytest.approx(info_nce(b, a).item(), rel=1e-6)


def test_info_nce_invariances():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 16, generator=gen), torch.randn(8, 16, generator=gen)
    bank = torch.randn(5, 16, generator=gen)
    base = info_nce(a, b, 0.1, bank).item()
    scaled = info_nce(3.0 * a, 0.5 * b, 0.1, 7.0 * bank).item()  # rows are normalised
    rotation, _ = torch.linalg.qr(torch.randn(16, 16, generator=gen))
    rotated = info_nce(a @ rotation, b @ rotation, 0.1, bank @ rotation).item()
    perm = torch.randperm(8, generator=gen)
    permuted = info_nce(a[perm], b[perm], 0.1, bank).item()  # the same pairs, reordered
    assert scaled == pytest.approx(base, rel=1e-5)
    assert rotated == pytest.approx(base, rel=1e-4)
    assert permuted == pytest.approx(base, rel=1e-5)


def test_views_of_one_sample_are_the_positives():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(8, 16, generator=gen)
    views = a + 0.05 * torch.randn(8, 16, generator=gen)  # two views of the same samples
    others = views[torch.roll(torch.arange(8), 1)]  # each row paired with another sample's view
    assert info_nce(a, views).item() < 0.1 < info_nce(a, others).item()


def test_bank_negatives_close_to_the_anchor_raise_the_loss():
    a = torch.randn(4, 8)
    assert info_nce(a, a, bank=a[:1] + 1e-3).item() > info_nce(a, a, bank=-a[:1]).item()


def test_info_nce_gradient_reaches_both_views_but_not_the_bank():
    a, b = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    bank = torch.randn(3, 8, requires_grad=True)
    info_nce(a, b, bank=bank).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0 and bank.grad is None


def test_info_nce_loss_module():
    loss = InfoNCE(tau=0.5)
    z = torch.eye(2)
    value = loss({"projection": z.unsqueeze(1)}, {"projection": z}).item()  # (B, 1, D) accepted
    assert value == pytest.approx(info_nce(z, z, 0.5).item())
    with pytest.raises(ValueError, match="tau must be > 0"):
        InfoNCE(tau=0.0)
    with pytest.raises(ValueError, match="views must be"):
        info_nce(torch.zeros(2, 3), torch.zeros(3, 3))


def test_total_variation_hand_values():
    x = torch.tensor([[[0.0, 1.0], [2.0, 4.0]]])  # (B=1, T=2, F=2)
    # time diffs: 2, 3; frequency diffs: 1, 2
    assert total_variation(x, power=1).item() == pytest.approx(2.5 + 1.5)
    assert total_variation(x, power=2).item() == pytest.approx((4 + 9) / 2 + (1 + 4) / 2)
    assert total_variation(torch.ones(2, 5, 3)).item() == 0.0
    with pytest.raises(ValueError, match="power must be 1 or 2"):
        total_variation(x, power=3)


def test_l2_prior_hand_value():
    assert l2_prior(torch.tensor([[1.0, -2.0], [3.0, 0.0]])).item() == pytest.approx(14 / 4)


def test_bn_statistics_gap_hand_value():
    gap = bn_statistics_gap(
        torch.tensor([1.0, 2.0]),
        torch.tensor([1.0, 5.0]),
        torch.tensor([1.0, -1.0]),
        torch.tensor([1.0, 1.0]),
    )
    assert gap.item() == pytest.approx(3.0 + 4.0)  # |(0, 3)| + |(0, 4)|
