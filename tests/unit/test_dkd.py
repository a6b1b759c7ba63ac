"""Decoupled KD: hand-computed value, identity with Hinton KD, invariances, precision, errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hyperpyyaml import load_hyperpyyaml

from kd_modules.losses import DecoupledKD, HintonKD


def logits(z) -> dict[str, torch.Tensor]:
    return {"logits": torch.as_tensor(z, dtype=torch.float32)}


def randn(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(p * np.log(p / q)))


def numpy_dkd(z_s, z_t, targets, alpha: float, beta: float, tau: float) -> float:
    """DKD from its definition: p renormalised over the non-target classes, row by row."""
    losses = []
    for s_row, t_row, y in zip(np.asarray(z_s, float), np.asarray(z_t, float), targets):
        p_s, p_t = softmax(s_row / tau), softmax(t_row / tau)
        b_s, b_t = np.array([p_s[y], 1 - p_s[y]]), np.array([p_t[y], 1 - p_t[y]])
        hat_s, hat_t = np.delete(p_s, y) / (1 - p_s[y]), np.delete(p_t, y) / (1 - p_t[y])
        losses.append(alpha * kl(b_t, b_s) + beta * kl(hat_t, hat_s))
    return tau**2 * float(np.mean(losses))


def test_dkd_hand_computed_2x3():
    z_s, z_t = [[1.0, 0.0, -1.0], [0.0, 2.0, 1.0]], [[2.0, 1.0, 0.0], [0.5, 0.0, 3.0]]
    targets = [0, 2]
    loss = DecoupledKD(alpha=0.5, beta=3.0, tau=2.0)
    value = loss(logits(z_s), logits(z_t), None, torch.tensor(targets))
    assert value.dtype == torch.float32 and value.shape == ()
    expected = numpy_dkd(z_s, z_t, targets, alpha=0.5, beta=3.0, tau=2.0)
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_dkd_decomposes_hinton_kd_with_teacher_non_target_mass():
    """KD = TCKD + (1 − p_t,y)·NCKD per clip (Zhao et al., eq. 4); alpha = beta = 1 is not KD."""
    tau = 3.0
    z_s, z_t = randn(4, 6, seed=0, scale=3.0), randn(4, 6, seed=1, scale=3.0)
    targets = torch.tensor([0, 5, 2, 2])
    tckd, nckd, hinton = DecoupledKD(1.0, 0.0, tau), DecoupledKD(0.0, 1.0, tau), HintonKD(tau)
    for i, y in enumerate(targets):
        s, t, y = logits(z_s[i : i + 1]), logits(z_t[i : i + 1]), y.reshape(1)
        teacher_rest = 1 - torch.softmax(z_t[i] / tau, dim=-1)[y]
        decomposed = tckd(s, t, None, y) + teacher_rest * nckd(s, t, None, y)
        torch.testing.assert_close(decomposed.reshape(()), hinton(s, t), rtol=1e-5, atol=0)
    both = DecoupledKD(1.0, 1.0, tau)(logits(z_s), logits(z_t), None, targets)
    assert abs(both.item() - hinton(logits(z_s), logits(z_t)).item()) > 1e-3


def test_dkd_invariant_to_a_constant_per_row_on_either_side():
    z_s, z_t, targets = randn(3, 5, seed=2), randn(3, 5, seed=3), torch.tensor([1, 4, 0])
    loss = DecoupledKD()
    reference = loss(logits(z_s), logits(z_t), None, targets)
    shift = torch.tensor([[7.0], [-3.0], [100.0]])
    for s, t in ((z_s + shift, z_t), (z_s, z_t - shift)):
        value = loss(logits(s), logits(t), None, targets)
        torch.testing.assert_close(value, reference, rtol=1e-5, atol=1e-6)


def test_dkd_zero_when_student_equals_teacher():
    z = randn(4, 7, seed=4, scale=5.0)
    value = DecoupledKD()(logits(z), logits(z.clone()), None, torch.tensor([0, 1, 6, 3]))
    assert value.item() == pytest.approx(0.0, abs=1e-6)


def test_dkd_gradient_finite_with_a_saturated_teacher():
    """p_t,y rounds to 1 in float32 (1 − p_y = 0): log(1 − p_y) must stay finite."""
    z_s = randn(2, 4, seed=5).requires_grad_()
    z_t = torch.tensor([[80.0, 0.0, 1.0, -2.0], [0.0, 0.5, 60.0, 1.0]])
    targets = torch.tensor([0, 2])
    value = DecoupledKD(tau=1.0)({"logits": z_s}, logits(z_t), None, targets)
    value.backward()
    assert torch.isfinite(value) and value > 0
    assert torch.isfinite(z_s.grad).all() and z_s.grad.abs().sum() > 0
    exact = DecoupledKD(tau=1.0)(logits(z_s.double()), logits(z_t.double()), None, targets)
    assert value.item() == pytest.approx(exact.item(), rel=1e-5)


def test_dkd_one_clip_and_speechbrain_shapes():
    z_s, z_t = [[0.3, -1.0, 2.0, 0.0]], [[1.0, 0.0, 1.5, -0.5]]
    loss = DecoupledKD(alpha=1.0, beta=8.0, tau=4.0)
    flat = loss(logits(z_s), logits(z_t), None, torch.tensor([2]))
    # SpeechBrain's (B, 1, C) classifier output and (B, 1) encoded labels
    nested = loss(
        {"logits": torch.tensor([z_s])}, {"logits": torch.tensor([z_t])}, None, torch.tensor([[2]])
    )
    expected = numpy_dkd(z_s, z_t, [2], alpha=1.0, beta=8.0, tau=4.0)
    assert flat.item() == pytest.approx(expected, rel=1e-5) and nested.item() == flat.item()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dkd_half_inputs_give_float32_close_to_float32(dtype):
    z_s, z_t = randn(16, 50, seed=6, scale=5.0), randn(16, 50, seed=7, scale=5.0)
    targets = torch.arange(16) * 3
    loss = DecoupledKD()
    half = loss(logits(z_s.to(dtype)), logits(z_t.to(dtype)), None, targets)
    rounded = (logits(z_s.to(dtype).float()), logits(z_t.to(dtype).float()))
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, loss(*rounded, None, targets), rtol=1e-6, atol=0)
    with torch.autocast("cpu", dtype=dtype):
        autocast = loss(logits(z_s), logits(z_t), None, targets)
    reference = loss(logits(z_s), logits(z_t), None, targets)
    assert autocast.dtype == torch.float32
    torch.testing.assert_close(autocast, reference, rtol=1e-6, atol=0)


def test_dkd_yaml_builds_the_enskd_setting_its_comment_names():
    """hparams/kd/dkd.yaml with ``--dkd_beta 2 --tau 1`` (ENSKD's speaker setting) builds
    DecoupledKD(alpha 1, beta 2, tau 1) on the logits, weighted by dkd_weight."""
    yaml = Path(__file__).parents[2] / "recipes/speaker_verification/hparams/kd/dkd.yaml"
    overrides = {"teacher_folder": "unused", "dkd_beta": 2.0, "tau": 1.0}
    hparams = load_hyperpyyaml(yaml.read_text(), overrides)
    loss = hparams["kd_losses"]["dkd"]
    assert isinstance(loss, DecoupledKD) and hparams["kd_weights"] == {"dkd": 1.0}
    assert (loss.alpha, loss.beta, loss.tau, loss.key) == (1.0, 2.0, 1.0, "logits")


def test_dkd_error_messages():
    z = logits([[0.0, 1.0, 2.0]])
    message = (
        "DecoupledKD needs targets: the class ids (B,) that split target and non-target "
        "classes; got None"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        DecoupledKD()(z, z, None, None)
    with pytest.raises(ValueError, match=re.escape("DecoupledKD: targets of shape (2,) for 1")):
        DecoupledKD()(z, z, None, torch.tensor([0, 1]))
    one_class = logits([[0.0]])
    with pytest.raises(ValueError, match="DecoupledKD needs at least 2 classes, got logits of 1"):
        DecoupledKD()(one_class, one_class, None, torch.tensor([0]))
