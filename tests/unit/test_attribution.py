"""Integrated gradients batched over steps, segment maps and the integrated input (IML-KD).

The model is a tiny SpeechBrain ECAPA-TDNN (random weights, eval mode, float64) on 80-bin fbank
features of real LibriSpeech clips; F is the cosine score of its embedding against a per-utterance
prototype, the shape of IML-KD's "cosine score of the true speaker".
"""

from __future__ import annotations

import copy

import pytest
import torch
from captum.attr import IntegratedGradients
from speechbrain.lobes.features import Fbank
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
from torch import Tensor, nn

from kd_modules.attribution import (
    STEP_RULES,
    IntegratedInput,
    integrated_gradients,
    segment_attributions,
    segment_gaps,
    step_alphas,
)
from kd_modules.dataio import read_audio

CLIPS = (
    "LibriSpeech/test-other/1688/142285/1688-142285-0002.flac",
    "LibriSpeech/train-clean-100/83/11691/83-11691-0000.flac",
)


@pytest.fixture(scope="module")
def feats(shared_data) -> Tensor:
    """(2, 101, 80) float64 mean-normalised fbank of the first second of two real clips."""
    root = shared_data / "librispeech_subset"
    wavs = torch.stack([read_audio(root / clip, 16000)[:16000] for clip in CLIPS])
    fbank = Fbank(n_mels=80)(wavs).double()
    return fbank - fbank.mean(1, keepdim=True)


@pytest.fixture(scope="module")
def ecapa() -> nn.Module:
    """A tiny frozen ECAPA-TDNN (embedding size 8) in eval mode, float64."""
    torch.manual_seed(0)
    model = ECAPA_TDNN(
        80, channels=[16, 16, 16, 16, 48], attention_channels=8, lin_neurons=8
    ).double()
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def prototypes() -> Tensor:
    """(2, 8) unit-norm speaker prototypes, one per utterance."""
    torch.manual_seed(1)
    return nn.functional.normalize(torch.randn(2, 8, dtype=torch.float64), dim=-1)


def cosine_forward(model: nn.Module, prototypes: Tensor):
    """F (N, T, F) -> (N,): cosine of each example's embedding with its utterance's prototype
    (rows are step-major: row k·B + b belongs to utterance b)."""

    def forward(x: Tensor) -> Tensor:
        targets = prototypes.repeat(x.shape[0] // prototypes.shape[0], 1)
        return nn.functional.cosine_similarity(model(x).squeeze(1), targets, dim=-1)

    return forward


def row_forward(model: nn.Module, prototypes: Tensor):
    """The segment form of F: (x (N, t, F), rows (N,)) -> (N,), prototype picked by row."""

    def forward(x: Tensor, rows: Tensor) -> Tensor:
        embeddings = model(x).squeeze(1)
        return nn.functional.cosine_similarity(embeddings, prototypes[rows], dim=-1)

    return forward


def relative_gap(result) -> Tensor:
    """|gap| / |F(x) − F(x′)| per example."""
    return result.gap.abs() / (result.outputs - result.baseline_outputs).abs()


# ---------------------------------------------------------------- step rules and completeness


@pytest.mark.parametrize("rule", STEP_RULES)
def test_step_rules_are_quadratures_of_the_unit_interval(rule):
    alphas, weights = step_alphas(6, rule)
    assert alphas.shape == weights.shape == (6,)
    assert alphas.min() >= 0 and alphas.max() <= 1
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    # ∫₀¹ 3α² dα = 1: left/right Riemann to O(1/m), trapezoid/midpoint O(1/m²), Gauss–Legendre exact
    error = abs((weights * 3 * alphas**2).sum().item() - 1)
    assert error < {"riemann_left": 0.3, "riemann_right": 0.3}.get(rule, 0.03)


def test_step_rule_nodes():
    alphas, _ = step_alphas(4, "riemann_right")
    torch.testing.assert_close(alphas, torch.tensor([0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
    alphas, weights = step_alphas(5, "riemann_trapezoid")
    torch.testing.assert_close(alphas, torch.linspace(0, 1, 5, dtype=torch.float64))
    assert weights.tolist() == [0.125, 0.25, 0.25, 0.25, 0.125]
    alphas, weights = step_alphas(3, "gausslegendre")
    # m Gauss–Legendre nodes integrate polynomials of degree 2m − 1 = 5 exactly
    assert (weights * alphas**5).sum().item() == pytest.approx(1 / 6, abs=1e-14)


@pytest.mark.parametrize("rule", STEP_RULES)
def test_linear_model_has_zero_gap_and_exact_attributions(feats, rule):
    weight = torch.linspace(-1, 1, feats[0].numel(), dtype=torch.float64).view_as(feats[0])

    def linear(x: Tensor) -> Tensor:
        return (x * weight).flatten(1).sum(1) + 3.0

    baselines = feats.flip(0)  # each clip's baseline is the other clip
    result = integrated_gradients(linear, feats, baselines, steps=3, rule=rule)
    torch.testing.assert_close(result.attributions, (feats - baselines) * weight)
    assert result.gap.abs().max() < 1e-10
    torch.testing.assert_close(result.outputs, linear(feats))
    torch.testing.assert_close(result.baseline_outputs, linear(baselines))


def test_completeness_gap_shrinks_with_steps_on_real_fbank(feats, prototypes):
    # GELU instead of ReLU: with ReLU kinks along the path the signed quadrature error can change
    # sign and dip by chance at some m, so only a smooth F shows the convergence order cleanly
    torch.manual_seed(0)
    model = ECAPA_TDNN(
        80, channels=[16, 16, 16, 16, 48], attention_channels=8, lin_neurons=8, activation=nn.GELU
    )
    forward = cosine_forward(model.double().eval().requires_grad_(False), prototypes)
    gaps = {
        rule: [
            relative_gap(integrated_gradients(forward, feats, steps=m, rule=rule)).mean().item()
            for m in (4, 16, 64)
        ]
        for rule in ("riemann_right", "gausslegendre")
    }
    assert gaps["riemann_right"][0] > 5 * gaps["riemann_right"][2], gaps
    assert gaps["gausslegendre"][0] > gaps["gausslegendre"][1] > gaps["gausslegendre"][2], gaps
    assert gaps["gausslegendre"][2] < 2e-3, gaps  # within 0.2% of F(x) − F(x′)


def test_rules_agree_at_many_steps_in_float32_with_one_example(feats, ecapa, prototypes):
    one, model = feats[:1].float(), copy.deepcopy(ecapa).float()
    forward = cosine_forward(model, prototypes[:1].float())

    def spread(steps: int) -> float:
        """Largest difference of the rules' maps from Gauss–Legendre's, relative to its max."""
        maps = {
            rule: integrated_gradients(forward, one, steps=steps, rule=rule).attributions
            for rule in ("riemann_middle", "riemann_trapezoid", "gausslegendre")
        }
        assert all(m.dtype == torch.float32 and m.shape == one.shape for m in maps.values())
        reference = maps.pop("gausslegendre")
        scale = reference.abs().max()
        return max(((m - reference).abs().max() / scale).item() for m in maps.values())

    many, few = spread(256), spread(4)
    assert many < 2e-2 and few > 4 * many, (many, few)


def test_segment_gaps_are_each_segments_own_completeness_gap(feats, ecapa, prototypes):
    frames, lens = 40, torch.tensor([1.0, 0.7], dtype=torch.float64)
    forward = row_forward(ecapa, prototypes)
    maps = segment_attributions(forward, feats, lens, frames, steps=4, rule="gausslegendre")
    gaps, deltas = segment_gaps(forward, feats, lens, frames, maps)
    # 101 frames: 40 + 40 + 21; 71 valid: 40 + 31 (tails >= 20 frames stand alone); by length
    spans = [(0, 80, 21), (1, 40, 31), (0, 0, 40), (0, 40, 40), (1, 0, 40)]
    assert gaps.shape == deltas.shape == (len(spans),)
    for (row, start, length), gap, delta in zip(spans, gaps, deltas):
        segment = feats[row : row + 1, start : start + length]
        alone = integrated_gradients(
            cosine_forward(ecapa, prototypes[row : row + 1]), segment, steps=4, rule="gausslegendre"
        )
        torch.testing.assert_close(gap, alone.gap[0])
        torch.testing.assert_close(delta, alone.outputs[0] - alone.baseline_outputs[0])


# ---------------------------------------------------------------- agreement with Captum


@pytest.mark.parametrize("rule", ["riemann_right", "riemann_trapezoid", "gausslegendre"])
def test_matches_captum_integrated_gradients(feats, ecapa, prototypes, rule):
    forward, steps, baselines = cosine_forward(ecapa, prototypes), 8, feats.flip(0)
    ours = integrated_gradients(forward, feats, baselines, steps=steps, rule=rule).attributions
    captum = IntegratedGradients(forward).attribute(
        feats, baselines=baselines, n_steps=steps, method=rule
    )
    if rule == "riemann_trapezoid":
        # Captum's trapezoid takes the same m nodes linspace(0, 1, m) but weights 1/m (halved at
        # the ends), which sum to (m − 1)/m instead of 1; ours sum to 1 (completeness).
        captum = captum * steps / (steps - 1)
    assert ((ours - captum).abs().max() / captum.abs().max()).item() < 1e-4


# ---------------------------------------------------------------- batching over steps


def test_chunked_equals_unchunked_with_one_pass_per_chunk(feats, ecapa, prototypes):
    forward, steps = cosine_forward(ecapa, prototypes), 7
    calls: list[tuple[bool, int]] = []

    def counting(x: Tensor) -> Tensor:
        calls.append((torch.is_grad_enabled(), x.shape[0]))
        return forward(x)

    whole = integrated_gradients(counting, feats, steps=steps, rule="gausslegendre")
    assert calls == [(True, steps * 2), (False, 4)]  # m·B path rows, then the 2B end points
    for chunk in (1, 3, steps):
        calls.clear()
        chunked = integrated_gradients(
            counting, feats, steps=steps, rule="gausslegendre", chunk_size=chunk
        )
        sizes = [min(chunk, steps - start) * 2 for start in range(0, steps, chunk)]
        assert calls == [(True, rows) for rows in sizes] + [(False, 4)]
        torch.testing.assert_close(chunked.attributions, whole.attributions)
        torch.testing.assert_close(chunked.gap, whole.gap)


def test_no_parameter_grad_frozen_or_not_and_grad_mode_kept(feats, prototypes):
    torch.manual_seed(0)
    model = ECAPA_TDNN(80, channels=[8, 8, 8, 8, 24], attention_channels=4, lin_neurons=8)
    model = model.double().eval()
    forward = cosine_forward(model, prototypes)
    trainable = integrated_gradients(forward, feats, steps=3)
    assert all(p.grad is None for p in model.parameters())
    model.requires_grad_(False)
    with torch.no_grad():  # a Brain computes the teacher side under no_grad
        frozen = integrated_gradients(forward, feats, steps=3)
        assert not torch.is_grad_enabled()
    torch.testing.assert_close(frozen.attributions, trainable.attributions)
    assert all(p.grad is None for p in model.parameters())
    assert not any(t.requires_grad for t in frozen)
    assert model.training is False


def test_forward_errors_are_clear(feats):
    with pytest.raises(ValueError, match=r"one scalar per example, shape \(4,\), got \(4, 1\)"):
        integrated_gradients(lambda x: x.flatten(1).sum(1, keepdim=True), feats, steps=2)
    with pytest.raises(RuntimeError, match="does not depend on its input through autograd"):
        integrated_gradients(lambda x: x.detach().flatten(1).sum(1), feats, steps=2)


# ---------------------------------------------------------------- segments


def test_segment_maps_equal_ig_on_each_segment_alone(feats, ecapa, prototypes):
    lens = torch.tensor([1.0, 80 / 101])  # 101 and 80 valid frames
    forward = row_forward(ecapa, prototypes)
    maps = segment_attributions(forward, feats, lens, segment_frames=40, steps=4)
    # 101 = 40 + 40 + 21 (tail ≥ 20 kept); 80 = 40 + 40
    for row, spans in ((0, [(0, 40), (40, 40), (80, 21)]), (1, [(0, 40), (40, 40)])):
        for start, length in spans:
            segment = feats[row : row + 1, start : start + length]
            alone = integrated_gradients(
                lambda x, row=row: forward(x, torch.full((x.shape[0],), row)), segment, steps=4
            )
            torch.testing.assert_close(maps[row, start : start + length], alone.attributions[0])
    assert maps[1, 80:].abs().sum() == 0  # padded frames
    assert maps[0].abs().sum() > 0


def test_segment_maps_use_the_constant_baseline():
    """A linear score w·x of each 3-frame segment has IG w ⊙ (x − x′) exactly: the baseline
    enters every segment."""
    torch.manual_seed(0)
    weight = torch.randn(3, 4)
    feats = torch.randn(1, 6, 4)

    def forward(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return (x * weight).sum((1, 2))

    maps = segment_attributions(forward, feats, torch.ones(1), 3, steps=2, baseline=0.5)
    torch.testing.assert_close(maps[0], weight.repeat(2, 1) * (feats[0] - 0.5))


def test_segment_maps_of_a_batch_equal_each_utterance_alone(feats, ecapa, prototypes):
    lens = torch.tensor([1.0, 70 / 101])
    forward = row_forward(ecapa, prototypes)
    batch = segment_attributions(forward, feats, lens, segment_frames=30, steps=3)
    for row, valid in ((0, 101), (1, 70)):
        one = row_forward(ecapa, prototypes[row : row + 1])
        alone = segment_attributions(one, feats[row : row + 1, :valid], torch.ones(1), 30, 3)
        torch.testing.assert_close(batch[row, :valid], alone[0])


def test_segment_tiling_merges_short_tails_and_groups_equal_lengths(feats):
    valid = [25, 24, 7, 30]  # segment 10, min_tail 5: 10+10+5 | 10+14 | 7 | 10+10+10
    inputs = feats[:1, :30, :4].expand(4, -1, -1)
    calls: list[tuple[int, list[int]]] = []

    def forward(x: Tensor, rows: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            calls.append((x.shape[1], rows[: x.shape[0] // 2].tolist()))
        return torch.tanh(x).flatten(1).sum(1) * (rows + 1)

    lens = torch.tensor(valid) / 30
    maps = segment_attributions(forward, inputs, lens, segment_frames=10, steps=2)
    assert calls == [(5, [0]), (7, [2]), (10, [0, 0, 1, 3, 3, 3]), (14, [1])]
    for row, frames in enumerate(valid):
        assert maps[row, frames:].abs().sum() == 0
        assert (maps[row, :frames].abs().sum((1,)) > 0).all()


# ---------------------------------------------------------------- integrated input


def test_weight_is_normalised_per_utterance_and_padding_is_zero(feats):
    maps = [feats * 3, -feats, torch.zeros_like(feats)]
    lens = torch.tensor([1.0, 0.5])
    valid = round(0.5 * 101)
    for mode in ("mean", "concat"):
        weight = IntegratedInput(mode=mode).weight(maps, lens)
        blocks = weight.view(2, -1, 101, 80) if mode == "concat" else weight.unsqueeze(1)
        assert blocks.min() >= 0 and blocks.max() <= 1
        assert blocks[1, :, valid:].abs().sum() == 0
    concat = IntegratedInput(mode="concat").weight(maps, lens).view(2, 3, 101, 80)
    for row, frames in ((0, 101), (1, valid)):
        for d in (0, 1):
            peak = feats[row, :frames].abs().max()
            torch.testing.assert_close(concat[row, d, :frames], feats[row, :frames].abs() / peak)
        assert concat[row, 2].abs().sum() == 0  # an all-zero map stays 0
    mean = IntegratedInput(mode="mean").weight(maps, lens)
    torch.testing.assert_close(mean, concat.mean(1))
    assert mean.shape == feats.shape and concat.shape == (2, 3, 101, 80)


def test_apply_mean_and_concat_also_with_a_longer_padded_weight(feats):
    maps = [feats.abs(), feats**2]
    lens = torch.ones(2)
    short = feats[:, :90]
    for mode in ("mean", "concat"):
        integrated = IntegratedInput(durations_s=(0.5, 1.0), mode=mode)
        weight = integrated.weight([m[:, :90] for m in maps], lens)
        x_tilde = integrated.apply(short, weight)
        if mode == "mean":
            torch.testing.assert_close(x_tilde, short * (1 + weight))
        else:
            assert x_tilde.shape == (2, 180, 80)
            torch.testing.assert_close(x_tilde[:, 90:], short * (1 + weight[:, 90:]))
        # the same weight computed on a batch padded to 101 frames (zeros after 90)
        padded_maps = [nn.functional.pad(m[:, :90], (0, 0, 0, 11)) for m in maps]
        padded = integrated.weight(padded_maps, torch.full((2,), 90 / 101))
        torch.testing.assert_close(integrated.apply(short, padded), x_tilde)


def test_call_on_real_fbank_gives_the_weight_of_the_maps(feats, ecapa, prototypes):
    integrated = IntegratedInput(durations_s=(0.25, 0.5), steps=3, mode="concat")
    assert integrated.segment_frames() == [25, 50]
    forward, lens = row_forward(ecapa, prototypes), torch.tensor([1.0, 0.8])
    weight = integrated(forward, feats, lens)
    expected = integrated.weight(integrated.maps(forward, feats, lens), lens)
    torch.testing.assert_close(weight, expected)
    assert weight.shape == (2, 202, 80)
    peaks = weight.view(2, 2, -1).amax(-1)
    torch.testing.assert_close(peaks, torch.ones_like(peaks))


def test_settings_round_trip_and_segment_frames():
    integrated = IntegratedInput(
        durations_s=[0.5, 1.0, 0.004],
        hop_length_ms=20.0,
        steps=5,
        rule="gausslegendre",
        chunk_size=2,
        mode="concat",
        baseline=-1.5,
    )
    settings = integrated.settings()
    assert settings == {
        "durations_s": [0.5, 1.0, 0.004],
        "hop_length_ms": 20.0,
        "steps": 5,
        "rule": "gausslegendre",
        "chunk_size": 2,
        "mode": "concat",
        "baseline": -1.5,
    }
    assert IntegratedInput(**settings).settings() == settings
    assert integrated.segment_frames() == [25, 50, 1]
    assert IntegratedInput().segment_frames() == [50, 100, 200]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"rule": "simpson"},
            "unknown integration rule 'simpson'; valid rules: riemann_left, "
            "riemann_right, riemann_middle, riemann_trapezoid, gausslegendre",
        ),
        ({"steps": 0}, "steps must be an integer >= 1, got 0"),
        (
            {"steps": 1, "rule": "riemann_trapezoid"},
            "riemann_trapezoid needs steps >= 2 (both end points), got 1",
        ),
        ({"mode": "sum"}, "unknown mode 'sum'; valid modes: mean, concat"),
        ({"durations_s": ()}, "durations_s must name at least one segment duration (seconds)"),
        ({"chunk_size": 0}, "chunk_size must be an integer >= 1, got 0"),
    ],
)
def test_invalid_settings_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError) as error:
        IntegratedInput(**kwargs)
    assert str(error.value) == message


def test_invalid_call_arguments_raise_clear_errors(feats):
    with pytest.raises(ValueError, match="^steps must be an integer >= 1, got 2.5$"):
        step_alphas(2.5, "riemann_right")
    with pytest.raises(ValueError, match="^segment_frames must be an integer >= 1, got 0$"):
        segment_attributions(lambda x, rows: x.sum((1, 2)), feats, torch.ones(2), 0)
    integrated = IntegratedInput(durations_s=(1.0, 2.0), mode="concat")
    with pytest.raises(ValueError, match=r"weight of shape \(2, 101, 80\) does not fit feats"):
        integrated.apply(feats, feats)  # a concat weight needs 2 blocks of ≥ 101 frames


def test_map_without_the_completeness_gap_skips_the_end_point_forward():
    """completeness=False: the same attributions, no gap, and no forward beyond the step chunks."""
    torch.manual_seed(0)
    weight = torch.randn(5)
    calls = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return (x.pow(2) * weight).sum(1)

    inputs = torch.randn(3, 5)
    full = integrated_gradients(forward, inputs, steps=4, chunk_size=2)
    assert calls == [6, 6, 6]  # two chunks of 2 steps × 3 examples, then the 2B end points
    calls.clear()
    bare = integrated_gradients(forward, inputs, steps=4, chunk_size=2, completeness=False)
    assert calls == [6, 6]
    torch.testing.assert_close(bare.attributions, full.attributions)
    assert bare.gap is None and bare.outputs is None and bare.baseline_outputs is None
