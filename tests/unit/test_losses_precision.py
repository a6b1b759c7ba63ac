"""Every KD loss under fp16 / bf16 (AMP or half tensors) matches its float32 value, and works on a
batch of one clip.

Sizes are those of real runs (up to 1,000 frames, 768 channels, 50 classes, 512-dim embeddings):
that is where fp16 sums and squared frame counts overflow 65504.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import kd_modules.losses
from kd_modules.losses import (
    IUSP,
    DecoupledKD,
    EmbeddingKD,
    FitNetsHint,
    HintonKD,
    InfoNCE,
    KDLoss,
    MultiLevelKD,
    SigmoidKD,
    SimilarityPreserving,
    length_mask,
)

Case = tuple[KDLoss, dict[str, Tensor], dict[str, Tensor], "Tensor | None"]


def _randn(*shape: int, scale: float = 1.0, seed: int) -> Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _features(student: tuple, teacher: tuple, key: str = "h") -> tuple[dict, dict]:
    return {key: _randn(*student, seed=1)}, {key: _randn(*teacher, seed=2)}


def _logits(B: int, C: int, scale: float) -> tuple[dict, dict]:
    s, t = (_randn(B, C, scale=scale, seed=seed) for seed in (3, 4))
    return {"logits": s}, {"logits": t}


def _embeddings(B: int, E_s: int, E_t: int) -> tuple[dict, dict]:
    # Entries of about 12: a 512-dim squared norm ≈ 74k > 65504, the fp16 maximum.
    s, t = _randn(B, E_s, scale=8.0, seed=5), _randn(B, E_t, scale=12.0, seed=6)
    return {"embedding": s}, {"embedding": t}


def _lens(B: int) -> Tensor:
    return torch.linspace(1.0, 0.3, B)


def _seeded(factory: Callable[[], KDLoss]) -> KDLoss:
    with torch.random.fork_rng():  # the regressors' and projections' initial weights
        torch.manual_seed(0)
        return factory()


def case_hinton() -> Case:
    return HintonKD(tau=4.0), *_logits(16, 50, scale=5.0), None


def case_dkd() -> Case:
    return DecoupledKD(alpha=1.0, beta=8.0, tau=4.0), *_logits(16, 50, scale=5.0), None


def case_sigmoid() -> Case:
    return SigmoidKD(tau=2.0), *_logits(16, 23, scale=3.0), None


def case_fitnets_frames() -> Case:
    # Student 1,000 frames, teacher 500: the student is pooled, padding masked.
    loss = _seeded(lambda: FitNetsHint("h", 256, 768))
    return loss, *_features((4, 1000, 256), (4, 500, 768)), _lens(4)


def case_fitnets_maps() -> Case:
    loss = _seeded(lambda: FitNetsHint("h", 32, 64, layout="channels_first"))
    return loss, *_features((4, 32, 400, 8), (4, 64, 400, 8)), _lens(4)


def case_sp() -> Case:
    return SimilarityPreserving("h"), *_features((8, 1000, 128), (8, 1000, 768)), _lens(8)


def case_iusp() -> Case:
    return IUSP("h"), *_features((2, 1000, 128), (2, 1000, 768)), _lens(2)


def case_iusp_maps() -> Case:
    return IUSP("h", layout="bctf"), *_features((2, 16, 300, 8), (2, 32, 300, 8)), _lens(2)


def case_iusp_ecapa() -> Case:
    # ECAPA's channels-first frames (B, C, T): C = 256 student's 768 against C = 1024's 3072.
    return IUSP("h", layout="bct"), *_features((2, 768, 400), (2, 3072, 400)), _lens(2)


def case_sp_ecapa() -> Case:
    return SimilarityPreserving("h", time_dim=2), *_features((8, 96, 500), (8, 768, 500)), _lens(8)


def case_fitnets_ecapa() -> Case:
    loss = _seeded(lambda: FitNetsHint("h", 256, 1024, layout="channels_first"))
    return loss, *_features((4, 256, 400), (4, 1024, 400)), _lens(4)


def case_embedding_cosine() -> Case:
    return _seeded(lambda: EmbeddingKD(192, 512)), *_embeddings(16, 192, 512), None


def case_embedding_mse() -> Case:
    return _seeded(lambda: EmbeddingKD(192, 512, distance="mse")), *_embeddings(16, 192, 512), None


def case_mlkd() -> Case:
    dims = {"student_dim": 192, "teacher_dim": 512}
    loss = _seeded(lambda: MultiLevelKD(embedding_key="embedding", **dims))
    (s_logits, t_logits), (s_emb, t_emb) = _logits(16, 50, 5.0), _embeddings(16, 192, 512)
    return loss, {**s_logits, **s_emb}, {**t_logits, **t_emb}, None


def case_mlkd_sigmoid() -> Case:
    # Tagging: 37 sigmoid outputs (29 fine tags + 8 coarse classes), no embedding term.
    return MultiLevelKD(probabilities="sigmoid"), *_logits(16, 37, scale=5.0), None


def case_infonce() -> Case:
    # Projections of two views (64 samples, 128 dims) of entries about 12.
    a, b = _randn(64, 128, scale=12.0, seed=7), _randn(64, 128, scale=12.0, seed=8)
    return InfoNCE(tau=0.1), {"projection": a}, {"projection": b}, None


CASES = {
    "hinton": case_hinton,
    "dkd": case_dkd,
    "sigmoid": case_sigmoid,
    "fitnets_frames": case_fitnets_frames,
    "fitnets_maps": case_fitnets_maps,
    "sp": case_sp,
    "iusp": case_iusp,
    "iusp_maps": case_iusp_maps,
    "iusp_ecapa": case_iusp_ecapa,
    "sp_ecapa": case_sp_ecapa,
    "fitnets_ecapa": case_fitnets_ecapa,
    "embedding_cosine": case_embedding_cosine,
    "embedding_mse": case_embedding_mse,
    "mlkd": case_mlkd,
    "mlkd_sigmoid": case_mlkd_sigmoid,
    "infonce": case_infonce,
}


def test_every_kd_loss_the_package_exports_has_a_case():
    """Every KDLoss class ``kd_modules.losses`` offers a YAML (``!new:kd_modules.losses.X``)."""
    exported = {
        value
        for value in vars(kd_modules.losses).values()
        if isinstance(value, type) and issubclass(value, KDLoss) and value is not KDLoss
    }
    assert {type(CASES[name]()[0]) for name in CASES} == exported


# Class ids of the 16 clips of the logit cases (DKD needs them; every other loss ignores them).
TARGETS = torch.arange(16) * 3


def _cast(out: dict[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    return {key: x.to(dtype) for key, x in out.items()}


def _rounded(out: dict[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    """float32 tensors holding values representable in ``dtype``."""
    return _cast(_cast(out, dtype), torch.float32)


def _half_and_reference(case: Case, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The loss with module and tensors in ``dtype`` (a pure half model), and the float32 value
    of the very same numbers (parameters and inputs rounded to ``dtype``)."""
    loss, s, t, lens = case
    rounded = copy.deepcopy(loss).to(dtype).float()  # float32 weights holding dtype's values
    expected = rounded(_rounded(s, dtype), _rounded(t, dtype), lens, TARGETS)
    value = rounded.to(dtype)(_cast(s, dtype), _cast(t, dtype), lens, TARGETS)
    return value, expected


def _autocast_and_reference(case: Case, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The loss of float32 tensors under CPU autocast to ``dtype``, and without autocast."""
    loss, s, t, lens = case
    expected = loss(s, t, lens, TARGETS)
    with torch.autocast("cpu", dtype=dtype):
        value = loss(s, t, lens, TARGETS)
    return value, expected


MODES = {
    "fp16": (_half_and_reference, torch.float16),
    "bf16": (_half_and_reference, torch.bfloat16),
    "autocast_fp16": (_autocast_and_reference, torch.float16),
    "autocast_bf16": (_autocast_and_reference, torch.bfloat16),
}
# Regressors and projections run in fp16 (11 significant bits) or bf16 (8), everything after in
# float32: measured errors are below 1e-5 (fp16) and 4e-5 (bf16).
RTOL = {torch.float16: 1e-4, torch.bfloat16: 1e-3}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", CASES)
@torch.no_grad()
def test_loss_in_low_precision_matches_float32(name, mode):
    run, dtype = MODES[mode]
    value, expected = run(CASES[name](), dtype)
    assert value.dtype == torch.float32 and value.shape == ()
    assert torch.isfinite(value) and expected > 0
    torch.testing.assert_close(value, expected, rtol=RTOL[dtype], atol=1e-6)


@torch.no_grad()
def test_mlkd_terms_in_fp16_match_float32():
    """Each MLKD term on its own (their sum could hide a broken small one)."""
    loss, s, t, _ = case_mlkd()
    rounded = copy.deepcopy(loss).half().float()
    expected = rounded.forward_terms(_rounded(s, torch.float16), _rounded(t, torch.float16))
    terms = rounded.half().forward_terms(_cast(s, torch.float16), _cast(t, torch.float16))
    for name, value in terms.items():
        assert value.dtype == torch.float32 and expected[name] > 0
        torch.testing.assert_close(value, expected[name], rtol=RTOL[torch.float16], atol=0)


def test_length_mask_of_fp16_lens_counts_exact_frames():
    """fp16 ``lens * T`` lies on a coarse grid (0.25 frame from T = 256 on): off-by-one masks."""
    lens = torch.linspace(0.3, 1.0, 500).half()
    n_frames = length_mask(lens, 1000).sum(1)
    assert n_frames.tolist() == torch.round(lens.double() * 1000).long().tolist()


# ---------------------------------------------------------------- the issue's repros


def test_iusp_fp16_with_256_frames_is_not_zero():
    """T = 256 valid frames: T² = 65536 is inf in fp16, which made the utterance add 0."""
    fs, ft = _randn(1, 256, 2, seed=7).half(), _randn(1, 256, 3, seed=8).half()
    value = IUSP("f")({"f": fs}, {"f": ft})
    expected = IUSP("f")({"f": fs.float()}, {"f": ft.float()})
    assert value.dtype == torch.float32 and expected > 1e-3
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=0)


def _identity_hint(dim: int, dtype: torch.dtype) -> FitNetsHint:
    hint = FitNetsHint("h", dim, dim)
    with torch.no_grad():
        hint.regressor.weight.copy_(torch.eye(dim))
        hint.regressor.bias.zero_()
    return hint.to(dtype)


def test_fitnets_fp16_with_lens_over_65520_elements():
    """T = 1024, D = 64: the fp16 mask sum (65536) was inf, the loss 0 or NaN."""
    lens = torch.tensor([1.0])
    zeros, tenth = torch.zeros(1, 1024, 64).half(), torch.full((1, 1024, 64), 0.1).half()
    value = _identity_hint(64, torch.float16)({"h": zeros}, {"h": tenth}, lens)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(tenth[0, 0, 0].double().item() ** 2, rel=1e-6)

    s, t = _randn(1, 1024, 64, seed=9).half(), _randn(1, 1024, 64, seed=10).half()
    value = _identity_hint(64, torch.float16)({"h": s}, {"h": t}, lens)
    expected = F.mse_loss(s.double(), t.double())  # independent: all frames are valid
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)


# ---------------------------------------------------------------- a batch of one clip


def _clip(out: dict[str, Tensor], i: int) -> dict[str, Tensor]:
    return {key: x[i : i + 1] for key, x in out.items()}


@pytest.mark.parametrize(
    "name",
    ["hinton", "sigmoid", "iusp", "iusp_maps", "iusp_ecapa", "embedding_cosine", "embedding_mse"],
)
@torch.no_grad()
def test_per_clip_mean_losses_on_one_clip(name):
    """Losses that average over clips: the batch value is the mean of the B = 1 values."""
    loss, s, t, lens = CASES[name]()
    B = next(iter(s.values())).shape[0]
    singles = [
        loss(_clip(s, i), _clip(t, i), None if lens is None else lens[i : i + 1]) for i in range(B)
    ]
    for value in singles:
        assert value.shape == () and torch.isfinite(value) and value > 0
    torch.testing.assert_close(torch.stack(singles).mean(), loss(s, t, lens), rtol=1e-5, atol=0)


@pytest.mark.parametrize("name", ["fitnets_frames", "fitnets_maps", "fitnets_ecapa"])
@torch.no_grad()
def test_fitnets_on_one_clip(name):
    """FitNets averages over valid elements: the batch value weighs each clip by its frames."""
    loss, s, t, lens = CASES[name]()
    T = min(s["h"].shape[loss.time_dim], t["h"].shape[loss.time_dim])  # frames after pooling
    frames = torch.round(lens * T)
    singles = torch.stack([loss(_clip(s, i), _clip(t, i), lens[i : i + 1]) for i in range(4)])
    assert singles.ndim == 1 and torch.isfinite(singles).all() and (singles > 0).all()
    expected = (singles * frames).sum() / frames.sum()
    torch.testing.assert_close(expected, loss(s, t, lens), rtol=1e-5, atol=0)


@pytest.mark.parametrize("case", [case_sp, case_sp_ecapa], ids=["sp", "sp_ecapa"])
@torch.no_grad()
def test_sp_on_one_clip_is_zero(case):
    """A batch of one has the 1×1 similarity matrix [1] on both sides: SP is 0, not NaN."""
    loss, s, t, lens = case()
    value = loss(_clip(s, 0), _clip(t, 0), lens[:1])
    assert value.shape == () and value.item() == 0.0


def _sq_norm(z: Tensor, tau: float) -> Tensor:
    """‖softmax(z / tau)‖² of one clip's logits (C,)."""
    return torch.softmax(z / tau, -1).square().sum()


@torch.no_grad()
def test_mlkd_on_one_clip():
    """B = 1: the instance term is the clip's share of the batch's, p pᵀ is the scalar ‖p‖²."""
    loss, s, t, _ = case_mlkd()
    singles = [loss.forward_terms(_clip(s, i), _clip(t, i)) for i in range(16)]
    for terms in singles:
        assert all(v.shape == () and torch.isfinite(v) and v > 0 for v in terms.values())
    instance = torch.stack([terms["instance"] for terms in singles]).mean()
    torch.testing.assert_close(instance, loss.forward_terms(s, t)["instance"], rtol=1e-5, atol=0)
    z_s, z_t = s["logits"][0], t["logits"][0]
    batch = sum((_sq_norm(z_t, tau) - _sq_norm(z_s, tau)) ** 2 for tau in loss.taus)
    torch.testing.assert_close(singles[0]["batch"], batch, rtol=1e-5, atol=1e-9)


@torch.no_grad()
def test_mlkd_sigmoid_on_one_clip():
    """B = 1 of the multi-label form: the instance term is the clip's share of the batch's, and
    the batch term is (‖σ(z_t/τ)‖² − ‖σ(z_s/τ)‖²)² summed over τ."""
    loss, s, t, _ = case_mlkd_sigmoid()
    singles = [loss.forward_terms(_clip(s, i), _clip(t, i)) for i in range(16)]
    for terms in singles:
        assert all(v.shape == () and torch.isfinite(v) and v > 0 for v in terms.values())
    instance = torch.stack([terms["instance"] for terms in singles]).mean()
    torch.testing.assert_close(instance, loss.forward_terms(s, t)["instance"], rtol=1e-5, atol=0)
    z_s, z_t = s["logits"][0], t["logits"][0]
    norm = lambda z, tau: torch.sigmoid(z / tau).square().sum()  # noqa: E731
    batch = sum((norm(z_t, tau) - norm(z_s, tau)) ** 2 for tau in loss.taus)
    torch.testing.assert_close(singles[0]["batch"], batch, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize(
    "loss",
    [HintonKD(), SigmoidKD(), MultiLevelKD(taus=(2, 4)), MultiLevelKD(probabilities="sigmoid")],
    ids=["hinton", "sigmoid", "mlkd", "mlkd_sigmoid"],
)
def test_speechbrain_shaped_logits_of_one_clip(loss: nn.Module):
    """SpeechBrain's classifier output (1, 1, C) for one clip gives the (1, C) value."""
    z_s, z_t = _randn(1, 1, 10, seed=11), _randn(1, 1, 10, seed=12)
    flat = loss({"logits": z_s[:, 0]}, {"logits": z_t[:, 0]})
    assert loss({"logits": z_s}, {"logits": z_t}).item() == pytest.approx(flat.item())
    assert flat > 0
