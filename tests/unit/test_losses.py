"""KD losses: hand-computed values on tiny tensors, invariances, padding, naive references."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kd_modules.losses import (
    IUSP,
    EmbeddingKD,
    FitNetsHint,
    HintonKD,
    MultiLevelKD,
    SigmoidKD,
    SimilarityPreserving,
    align_time,
    length_mask,
)

LN3 = math.log(3.0)


def out(key, x):
    return {key: x}


def set_identity(linear: nn.Linear):
    with torch.no_grad():
        linear.weight.copy_(torch.eye(linear.out_features, linear.in_features))
        linear.bias.zero_()


# ---------------------------------------------------------------- base helpers


def test_length_mask_rounds_and_keeps_one_frame():
    mask = length_mask(torch.tensor([1.0, 0.5, 0.6, 0.01]), 4)
    # round(4·lens) = 4, 2, 2.4→2, 0.04→0 clamped to 1
    expected = [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0]]
    assert mask.dtype == torch.bool and mask.tolist() == [[bool(v) for v in r] for r in expected]


def test_align_time_pools_longer_and_ignores_padding():
    short = torch.zeros(1, 2, 1)
    long = torch.tensor([1.0, 3.0, 5.0, 7.0]).reshape(1, 4, 1)
    a, b = align_time(short, long)
    assert a is short and b.flatten().tolist() == [2.0, 6.0]  # (1+3)/2, (5+7)/2
    # lens 0.5 with T=4 → frames 0,1 valid; pool to 3 frames: windows [0,2) [1,3) [2,4)
    pooled, _ = align_time(long, torch.zeros(1, 3, 1), lens=torch.tensor([0.5]))
    assert pooled.flatten().tolist() == [2.0, 3.0, 0.0]  # padded 5, 7 never enter


def test_missing_key_names_loss_and_available_keys():
    with pytest.raises(KeyError, match="HintonKD.*'logits'.*student.*embedding"):
        HintonKD()({"embedding": torch.zeros(1, 2)}, {"logits": torch.zeros(1, 2)}, None, None)


# ---------------------------------------------------------------- logits


def test_hinton_manual_value_and_tau_squared():
    # tau = 1: p_s = softmax(0, 0) = (1/2, 1/2); p_t = softmax(ln 3, 0) = (3/4, 1/4)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    z_s = torch.zeros(1, 2)
    loss = HintonKD(tau=1.0)(
        out("logits", z_s), out("logits", torch.tensor([[LN3, 0.0]])), None, None
    )
    assert loss.item() == pytest.approx(kl)
    # tau = 2 on logits doubled: same distributions, times tau² = 4
    loss2 = HintonKD(tau=2.0)(out("logits", z_s), out("logits", torch.tensor([[2 * LN3, 0.0]])))
    assert loss2.item() == pytest.approx(4 * kl)


def test_hinton_zero_when_equal_and_shift_invariant():
    z_s, z_t = torch.randn(3, 5), torch.randn(3, 5)
    kd = HintonKD(tau=3.0)
    assert kd(out("logits", z_t), out("logits", z_t)).item() == pytest.approx(0.0, abs=1e-6)
    shifted = kd(out("logits", z_s + 7.0), out("logits", z_t - 2.0))
    assert shifted.item() == pytest.approx(
        kd(out("logits", z_s), out("logits", z_t)).item(), rel=1e-5
    )


def test_hinton_matches_manual_kl_batch_mean_and_b1c_shape():
    z_s, z_t, tau = torch.randn(4, 6), torch.randn(4, 6), 4.0
    p_t, p_s = torch.softmax(z_t / tau, -1), torch.softmax(z_s / tau, -1)
    manual = tau**2 * (p_t * (p_t / p_s).log()).sum(-1).mean()
    kd = HintonKD(tau=tau, key="z")
    assert kd(out("z", z_s), out("z", z_t)).item() == pytest.approx(manual.item(), rel=1e-5)
    b1c = kd(out("z", z_s.unsqueeze(1)), out("z", z_t.unsqueeze(1)))  # SpeechBrain (B, 1, C)
    assert b1c.item() == pytest.approx(manual.item(), rel=1e-5)


def test_sigmoid_kd_manual_value():
    # tag 1: σ(0) = 1/2 vs target σ(ln 3) = 3/4 → −(3/4·ln 1/2 + 1/4·ln 1/2) = ln 2
    # tag 2: σ(ln 3) = 3/4 vs target σ(0) = 1/2 → −(1/2·ln 3/4 + 1/2·ln 1/4)
    tag2 = -(0.5 * math.log(0.75) + 0.5 * math.log(0.25))
    z_s, z_t = torch.tensor([[0.0, LN3]]), torch.tensor([[LN3, 0.0]])
    loss = SigmoidKD()(out("logits", z_s), out("logits", z_t))
    assert loss.item() == pytest.approx((math.log(2) + tag2) / 2)
    # tau = 2 on doubled logits gives the same probabilities
    assert SigmoidKD(tau=2.0)(out("logits", 2 * z_s), out("logits", 2 * z_t)).item() == (
        pytest.approx(loss.item())
    )


# ---------------------------------------------------------------- FitNets


def test_fitnets_identity_regressor_equal_features_is_zero():
    x = torch.randn(2, 5, 3)
    hint = FitNetsHint("hint", 3, 3)
    set_identity(hint.regressor)
    assert hint(out("hint", x), out("hint", x), torch.tensor([1.0, 0.6])).item() == 0.0


def test_fitnets_manual_masked_mse_and_padding_garbage():
    hint = FitNetsHint("hint", 2, 2)
    set_identity(hint.regressor)
    s = torch.zeros(2, 2, 2)
    t = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[2.0, 2.0], [99.0, -99.0]]])
    lens = torch.tensor([1.0, 0.5])  # utterance 2 keeps frame 0 only
    # valid squared errors: 4 × 1 (utt 1) + 2 × 4 (utt 2) over 6 valid elements = 2
    assert hint(out("hint", s), out("hint", t), lens).item() == pytest.approx(2.0)
    s_garbage = s.clone()
    s_garbage[1, 1] = torch.tensor([1e3, -1e3])
    assert hint(out("hint", s_garbage), out("hint", t), lens).item() == pytest.approx(2.0)


def test_fitnets_gradient_reaches_regressor_and_student():
    hint = FitNetsHint("hint", 3, 5)
    s = torch.randn(2, 4, 3, requires_grad=True)
    hint(out("hint", s), out("hint", torch.randn(2, 4, 5)), torch.tensor([1.0, 0.5])).backward()
    assert hint.regressor.weight.grad.abs().sum() > 0 and s.grad.abs().sum() > 0


def test_fitnets_channels_first_is_a_1x1_conv_and_pools_time():
    s, t = torch.randn(2, 3, 4, 5), torch.randn(2, 6, 2, 5)  # (B, C, T, F); student T = 4
    hint = FitNetsHint("hint", 3, 6, layout="channels_first")
    conv = nn.Conv2d(3, 6, 1)
    conv.weight.data = hint.regressor.weight.data[:, :, None, None]
    conv.bias.data = hint.regressor.bias.data
    pooled = F.avg_pool2d(s, (2, 1))  # time 4 → 2
    expected = F.mse_loss(conv(pooled), t)
    assert hint(out("hint", s), out("hint", t)).item() == pytest.approx(expected.item(), rel=1e-5)


def test_fitnets_utterance_level_and_bad_layout():
    hint = FitNetsHint("embedding", 4, 4)
    set_identity(hint.regressor)
    e = torch.randn(3, 4)
    assert hint(out("embedding", e), out("embedding", e + 1)).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="layout"):
        FitNetsHint("h", 1, 1, layout="nchw")


# ---------------------------------------------------------------- SP


def sp_manual_2x2():
    # student Q = I → Q Qᵀ = I → G_s = I
    # teacher Q = [[1, 0], [1, 1]] → Q Qᵀ = [[1, 1], [1, 2]] → rows /√2 and /√5
    g_t = torch.tensor([[1 / math.sqrt(2), 1 / math.sqrt(2)], [1 / math.sqrt(5), 2 / math.sqrt(5)]])
    return ((g_t - torch.eye(2)) ** 2).sum().item()


def test_sp_manual_two_samples():
    s, t = torch.eye(2), torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    loss = SimilarityPreserving("f")(out("f", s), out("f", t))
    assert loss.item() == pytest.approx(sp_manual_2x2() / 4)  # / B²


def test_sp_on_channels_first_frames_masks_time_dim_2():
    """SP on ECAPA's (B, C, T) frames with ``time_dim=2``: the same as on (B, T, C); padded
    frames along dim 2 add nothing."""
    s, t = torch.randn(3, 4, 6), torch.randn(3, 7, 6)
    lens = torch.tensor([1.0, 0.5, 2 / 3])
    ref = SimilarityPreserving("f")(
        out("f", s.transpose(1, 2)), out("f", t.transpose(1, 2)), lens
    ).item()
    s_g = s.clone()
    s_g[1, :, 3:] = 1e4
    loss = SimilarityPreserving("f", time_dim=2)(out("f", s_g), out("f", t), lens)
    assert loss.item() == pytest.approx(ref, rel=1e-5)


def test_sp_batch_scaling_and_padding_garbage():
    s, t = torch.randn(3, 4, 5), torch.randn(3, 4, 7)  # D differs: fine for SP
    lens = torch.tensor([1.0, 0.5, 0.75])
    sp = SimilarityPreserving("f")
    ref = sp(out("f", s), out("f", t), lens)
    # scaling the batch by c scales Q Qᵀ by c², cancelled by row normalisation (scaling one sample
    # would scale its column too, which row normalisation does not cancel)
    assert sp(out("f", 20 * s), out("f", 0.1 * t), lens).item() == pytest.approx(
        ref.item(), rel=1e-5
    )
    per_sample = torch.tensor([0.1, 3.0, 20.0]).reshape(3, 1, 1)
    assert sp(out("f", s * per_sample), out("f", t), lens).item() != pytest.approx(ref.item())
    s_g, t_g = s.clone(), t.clone()
    s_g[1, 2:], t_g[2, 3:] = 1e3, -1e3
    assert sp(out("f", s_g), out("f", t_g), lens).item() == pytest.approx(ref.item(), rel=1e-5)


# ---------------------------------------------------------------- IUSP


def naive_iusp(s, t, lens):
    """Per-utterance loop over (B, T, D) features with equal T, straight from the formula."""
    T, total = s.shape[1], 0.0
    for n in range(s.shape[0]):
        t_n = int(round(lens[n].item() * T))
        grams = []
        for x in (s, t):
            q = x[n, :t_n]
            grams.append(F.normalize(q @ q.T, dim=1))
        total += ((grams[1] - grams[0]) ** 2).sum() / t_n**2
    return total / s.shape[0]


def test_iusp_manual_tiny_value_and_padding():
    # one utterance, T = 2: same matrices as the SP example; teacher D = 3 (differs from student)
    s = torch.eye(2).unsqueeze(0)
    t = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]])
    iusp = IUSP("f")
    assert iusp(out("f", s), out("f", t)).item() == pytest.approx(sp_manual_2x2() / 4)  # / T_n²
    # T = 3 with lens 2/3: the third frame is padding (garbage), T_n = 2 → same value
    s3 = torch.cat([s, torch.full((1, 1, 2), 50.0)], dim=1)
    t3 = torch.cat([t, torch.full((1, 1, 3), -7.0)], dim=1)
    loss = iusp(out("f", s3), out("f", t3), torch.tensor([2 / 3]))
    assert loss.item() == pytest.approx(sp_manual_2x2() / 4)


def test_iusp_equals_naive_loop():
    torch.manual_seed(0)
    s, t = torch.randn(3, 5, 4), torch.randn(3, 5, 6)
    lens = torch.tensor([1.0, 0.6, 0.4])
    loss = IUSP("f")(out("f", s), out("f", t), lens)
    assert loss.item() == pytest.approx(naive_iusp(s, t, lens).item(), rel=1e-5)


def test_iusp_utterance_scaling_invariance_and_padding_garbage():
    s, t = torch.randn(2, 6, 3), torch.randn(2, 6, 4)
    lens = torch.tensor([1.0, 0.5])
    iusp = IUSP("f")
    ref = iusp(out("f", s), out("f", t), lens).item()
    scale = torch.tensor([0.2, 9.0]).reshape(2, 1, 1)
    assert iusp(out("f", s * scale), out("f", t / scale), lens).item() == pytest.approx(
        ref, rel=1e-5
    )
    s_g = s.clone()
    s_g[1, 3:] = 1e4
    assert iusp(out("f", s_g), out("f", t), lens).item() == pytest.approx(ref, rel=1e-5)


def test_iusp_bctf_layout_matches_btd():
    s, t = torch.randn(2, 3, 5, 4), torch.randn(2, 2, 5, 6)  # (B, C, T, F)
    lens = torch.tensor([0.8, 1.0])
    as_btd = [x.permute(0, 2, 1, 3).flatten(2) for x in (s, t)]  # T × (C·F)
    loss = IUSP("f", layout="bctf")(out("f", s), out("f", t), lens)
    assert loss.item() == pytest.approx(naive_iusp(*as_btd, lens).item(), rel=1e-5)


def test_iusp_bct_layout_of_ecapa_frames_matches_btd():
    """ECAPA's blocks give (B, C, T): ``bct`` is IUSP on the transposed (B, T, C) frames, padded
    frames (garbage here) masked along dim 2."""
    s, t = torch.randn(2, 3, 6), torch.randn(2, 5, 6)  # (B, C, T), teacher wider
    lens = torch.tensor([1.0, 0.5])
    s[1, :, 3:], t[1, :, 3:] = 1e3, -1e3
    loss = IUSP("f", layout="bct")(out("f", s), out("f", t), lens)
    expected = naive_iusp(s.transpose(1, 2), t.transpose(1, 2), lens)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert IUSP("f", layout="btd")(out("f", s), out("f", t), lens).item() != pytest.approx(
        loss.item(), rel=1e-3
    )  # the time axis matters: read as (B, T, D) these are other frames


def test_iusp_time_alignment_by_pooling():
    s, t3 = torch.randn(2, 3, 4), torch.randn(2, 3, 5)
    t6 = t3.repeat_interleave(2, dim=1)  # teacher twice as many frames, pairs identical
    lens = torch.tensor([1.0, 2 / 3])  # student: 2 valid of 3; teacher: 4 valid of 6
    t6[1, 4:] = 1e3  # teacher padding garbage
    iusp = IUSP("f")
    ref = iusp(out("f", s), out("f", t3), lens).item()
    assert iusp(out("f", s), out("f", t6), lens).item() == pytest.approx(ref, rel=1e-5)


def test_iusp_gradient_flows_to_student():
    s = torch.randn(2, 4, 3, requires_grad=True)
    IUSP("f")(out("f", s), out("f", torch.randn(2, 4, 5)), torch.tensor([1.0, 0.5])).backward()
    assert s.grad[0].abs().sum() > 0 and s.grad[1, 2:].abs().sum() == 0  # padding gets no grad


# ---------------------------------------------------------------- embeddings


def test_embedding_cosine_scale_invariance_and_zero():
    e_s, e_t = torch.randn(4, 8), torch.randn(4, 8)
    kd = EmbeddingKD(8, 8)
    assert isinstance(kd.proj, nn.Identity)
    ref = kd(out("embedding", e_s), out("embedding", e_t)).item()
    assert kd(out("embedding", 5 * e_s), out("embedding", 0.1 * e_t)).item() == pytest.approx(ref)
    assert kd(out("embedding", e_t), out("embedding", 3 * e_t)).item() == pytest.approx(0, abs=1e-6)


def test_embedding_mse_with_projection():
    kd = EmbeddingKD(2, 3, distance="mse")
    with torch.no_grad():
        kd.proj.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        kd.proj.bias.zero_()
    # P [1, 2] = [1, 2, 3]; teacher [1, 2, 5] → squared errors (0, 0, 4), mean 4/3
    loss = kd(
        out("embedding", torch.tensor([[1.0, 2.0]])),
        out("embedding", torch.tensor([[1.0, 2.0, 5.0]])),
    )
    assert loss.item() == pytest.approx(4 / 3)
    with pytest.raises(ValueError, match="distance"):
        EmbeddingKD(2, 2, distance="l1")


# ---------------------------------------------------------------- MLKD


def naive_mlkd(z_s, z_t, taus, e_s=None, e_t=None):
    B, C = z_s.shape
    inst = cls = bat = 0.0
    for tau in taus:
        p_s, p_t = torch.softmax(z_s / tau, -1), torch.softmax(z_t / tau, -1)
        inst += tau**2 * sum((p_t[b] * (p_t[b] / p_s[b]).log()).sum() for b in range(B)) / B
        cls += ((p_t.T @ p_t - p_s.T @ p_s) ** 2).sum() / C
        bat += ((p_t @ p_t.T - p_s @ p_s.T) ** 2).sum() / B
    if e_s is not None:
        inst += sum(((e_s[b] - e_t[b]) ** 2).sum() for b in range(B)) / B
    return {"instance": inst, "class": cls, "batch": bat}


def test_mlkd_matches_naive_formulas():
    torch.manual_seed(1)
    z_s, z_t = torch.randn(4, 5), torch.randn(4, 5)
    e_s, e_t = torch.randn(4, 3), torch.randn(4, 6)
    mlkd = MultiLevelKD(embedding_key="embedding", student_dim=3, teacher_dim=6)
    s_out, t_out = {"logits": z_s, "embedding": e_s}, {"logits": z_t, "embedding": e_t}
    terms = mlkd.forward_terms(s_out, t_out, None, None)
    with torch.no_grad():
        expected = naive_mlkd(z_s, z_t, (2, 3, 4, 5, 6), mlkd.proj(e_s), e_t)
    for name in ("instance", "class", "batch"):
        assert terms[name].item() == pytest.approx(expected[name].item(), rel=1e-5)
    assert mlkd(s_out, t_out).item() == pytest.approx(
        sum(t.item() for t in terms.values()), rel=1e-6
    )


def naive_sigmoid_mlkd(z_s, z_t, taus):
    """Per-output Bernoulli KLs and the sigmoid probabilities' correlations, term by term."""
    B, K = z_s.shape
    inst = cls = bat = 0.0
    for tau in taus:
        p_s, p_t = torch.sigmoid(z_s / tau), torch.sigmoid(z_t / tau)
        kl = p_t * (p_t / p_s).log() + (1 - p_t) * ((1 - p_t) / (1 - p_s)).log()
        inst += tau**2 * kl.sum() / B
        cls += ((p_t.T @ p_t - p_s.T @ p_s) ** 2).sum() / K
        bat += ((p_t @ p_t.T - p_s @ p_s.T) ** 2).sum() / B
    return {"instance": inst, "class": cls, "batch": bat}


def test_mlkd_sigmoid_matches_naive_formulas_and_differs_from_softmax():
    torch.manual_seed(2)
    z_s, z_t = torch.randn(4, 6), torch.randn(4, 6)
    mlkd = MultiLevelKD(taus=(1, 2), probabilities="sigmoid")
    terms = mlkd.forward_terms(out("logits", z_s), out("logits", z_t))
    expected = naive_sigmoid_mlkd(z_s.double(), z_t.double(), (1, 2))
    for name in ("instance", "class", "batch"):
        assert terms[name].item() == pytest.approx(expected[name].item(), rel=1e-5)
    softmax = MultiLevelKD(taus=(1, 2))(out("logits", z_s), out("logits", z_t))
    assert mlkd(out("logits", z_s), out("logits", z_t)).item() != pytest.approx(softmax.item())
    # a shift of every logit changes each sigmoid output (softmax would not see it)
    shifted = mlkd.forward_terms(out("logits", z_s + 1), out("logits", z_t + 1))
    assert shifted["instance"].item() != pytest.approx(terms["instance"].item())
    assert mlkd(out("logits", z_t), out("logits", z_t)).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="probabilities"):
        MultiLevelKD(probabilities="tanh")


def test_mlkd_zero_when_equal():
    z, e = torch.randn(3, 4), torch.randn(3, 2)
    mlkd = MultiLevelKD(taus=(1, 2), embedding_key="embedding", student_dim=2, teacher_dim=2)
    both = {"logits": z, "embedding": e}
    assert mlkd(both, both).item() == pytest.approx(0.0, abs=1e-6)


def test_relation_losses_stay_finite_under_fp16_autocast():
    """Gram matrices of long, wide frame features overflow fp16 (row norm² ≈ T·C ≫ 65504)."""
    from kd_modules.losses import IUSP, MultiLevelKD, SimilarityPreserving

    gen = torch.Generator().manual_seed(0)
    s = {"h": torch.randn(4, 500, 64, generator=gen), "logits": torch.randn(8, 300, generator=gen)}
    t = {"h": torch.randn(4, 500, 768, generator=gen), "logits": torch.randn(8, 300, generator=gen)}
    for loss in (SimilarityPreserving("h"), IUSP("h")):
        reference = loss(s, t)
        with torch.autocast("cpu", dtype=torch.float16):
            value = loss(s, t)
        assert torch.isfinite(value)
        torch.testing.assert_close(value.float(), reference, rtol=2e-2, atol=1e-4)
    mlkd = MultiLevelKD()
    reference = mlkd.forward_terms(s, t)
    with torch.autocast("cpu", dtype=torch.float16):
        terms = mlkd.forward_terms(s, t)
    for name in ("class", "batch"):
        assert terms[name] > 0
        torch.testing.assert_close(terms[name].float(), reference[name], rtol=5e-2, atol=0)
