"""Integrated gradients (IG), batched over the interpolation steps, and IML-KD's integrated input.

``IG(x) = (x − x′) ⊙ ∫₀¹ ∇F(x′ + α (x − x′)) dα`` is approximated by a quadrature rule
``Σ_k w_k ∇F(x′ + α_k (x − x′))`` (:func:`step_alphas`). :func:`integrated_gradients` evaluates a
chunk of c steps of all B examples as ONE batch of c·B interpolated inputs, so one forward and one
backward pass run per chunk (never one per step). :func:`segment_attributions` computes IG on
fixed-duration segments of each utterance and stitches the maps back; :class:`IntegratedInput`
turns those maps into the input weighting of IML-KD (docs/METHODS.md §2). Nothing here knows a
dataset or a model: the caller passes ``forward``, a function giving one scalar per example.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import Tensor

STEP_RULES = (
    "riemann_left",
    "riemann_right",
    "riemann_middle",
    "riemann_trapezoid",
    "gausslegendre",
)
MODES = ("mean", "concat")
VIEWS = ("per_view", "shared")


class Attribution(NamedTuple):
    """What :func:`integrated_gradients` returns; every tensor is detached."""

    attributions: Tensor  # (B, ...) like the inputs
    gap: Tensor | None  # (B,) completeness gap: sum(attributions) − (F(x) − F(x′))
    outputs: Tensor | None  # (B,) F(x)
    baseline_outputs: Tensor | None  # (B,) F(x′)


def _check_positive_int(name: str, value: object) -> None:
    """Raise ValueError unless ``value`` is an integer >= 1 (a bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _check_steps(steps: int, rule: str) -> None:
    """Raise ValueError for an unknown rule or a step count the rule cannot use."""
    if rule not in STEP_RULES:
        raise ValueError(f"unknown integration rule {rule!r}; valid rules: {', '.join(STEP_RULES)}")
    _check_positive_int("steps", steps)
    if rule == "riemann_trapezoid" and steps < 2:
        raise ValueError(f"riemann_trapezoid needs steps >= 2 (both end points), got {steps}")


def step_alphas(steps: int, rule: str) -> tuple[Tensor, Tensor]:
    """(alphas (m,), weights (m,)) of the rule: IG ≈ (x − x′) ⊙ Σ_k w_k ∇F(x′ + α_k (x − x′)).

    riemann_right is docs/METHODS.md's (1/m) Σ_{k=1..m} with α_k = k/m; riemann_left uses
    α_k = (k−1)/m and riemann_middle α_k = (k − ½)/m, all with w_k = 1/m; riemann_trapezoid is the
    composite trapezoid rule on the m points α_k = (k−1)/(m−1) (w = 1/(m−1), halved at both ends);
    gausslegendre uses the m Gauss–Legendre nodes and weights mapped from [−1, 1] to [0, 1]. The
    weights of every rule sum to 1, so a model that is linear along the path has a zero gap
    (Captum's riemann_trapezoid takes the same nodes with weights 1/m halved at the ends, which sum
    to (m−1)/m: its attributions are ours times (m−1)/m). float64, on the CPU; m = ``steps``.
    """
    _check_steps(steps, rule)
    k = torch.arange(steps, dtype=torch.float64)
    uniform = torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    if rule == "riemann_left":
        return k / steps, uniform
    if rule == "riemann_right":
        return (k + 1) / steps, uniform
    if rule == "riemann_middle":
        return (k + 0.5) / steps, uniform
    if rule == "riemann_trapezoid":
        weights = torch.full((steps,), 1.0 / (steps - 1), dtype=torch.float64)
        weights[[0, -1]] /= 2
        return k / (steps - 1), weights
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return torch.from_numpy((nodes + 1) / 2), torch.from_numpy(weights / 2)


def _check_chunk_size(chunk_size: int | None) -> None:
    """Raise ValueError unless chunk_size is None or an integer >= 1."""
    if chunk_size is not None:
        _check_positive_int("chunk_size", chunk_size)


def _scalar_per_example(out: Tensor, rows: int) -> Tensor:
    """Check that forward returned shape (rows,) and give it back."""
    if not isinstance(out, Tensor) or out.shape != (rows,):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"forward must return one scalar per example, shape ({rows},), got {shape}"
        )
    return out


def _path_gradient_sum(
    forward: Callable[[Tensor], Tensor],
    baselines: Tensor,
    diff: Tensor,
    alphas: Tensor,
    weights: Tensor,
) -> Tensor:
    """Σ_k w_k ∇F(x′ + α_k (x − x′)) over one chunk of c steps: (B, ...) from one forward of the
    (c·B, ...) interpolated batch (row k·B + b = example b at step k) and one autograd.grad of the
    summed outputs (the examples are independent, so each row's gradient is its own)."""
    shape = (-1,) + (1,) * baselines.dim()
    path = (baselines.unsqueeze(0) + alphas.view(shape) * diff.unsqueeze(0)).flatten(0, 1)
    path.requires_grad_(True)
    with torch.enable_grad():
        out = _scalar_per_example(forward(path), path.shape[0])
        if not out.requires_grad:
            raise RuntimeError(
                "forward's output does not depend on its input through autograd "
                "(is it computed under torch.no_grad() or detached?)"
            )
        (grad,) = torch.autograd.grad(out.sum(), path)
    return (weights.view(shape) * grad.view(alphas.shape[0], *baselines.shape)).sum(0)


def integrated_gradients(
    forward: Callable[[Tensor], Tensor],
    inputs: Tensor,
    baselines: Tensor | None = None,
    steps: int = 20,
    rule: str = "riemann_right",
    chunk_size: int | None = None,
    completeness: bool = True,
) -> Attribution:
    """IG of ``forward`` at ``inputs`` (B, ...) from ``baselines`` (broadcastable to the inputs;
    None = zeros), with ``steps`` points of ``rule`` (:func:`step_alphas`).

    forward: (N, ...) -> (N,) one scalar per example (e.g. the teacher's cosine score of the true
    speaker). Batched over the interpolation steps: the B inputs are expanded to (c·B, ...) for a
    chunk of c steps, step-major (row k·B + b is example b, so a per-example target t (B,) is
    ``t.repeat(N // B)`` inside forward), and ONE forward + ONE backward (torch.autograd.grad of
    the sum) runs per chunk; chunk_size=None means all m steps in one chunk (c·B rows at a time
    bounds the memory). F(x) and F(x′) for the completeness gap come from one more forward of the
    2B end points under no_grad; ``completeness=False`` skips it (``gap``, ``outputs`` and
    ``baseline_outputs`` are then None) for callers that only want the map, such as
    :func:`segment_attributions`. Works whatever requires_grad the model's parameters have (only
    the input's gradient is asked for, so no parameter ``.grad`` is ever created), returns detached
    tensors, changes no global state (grad mode is enabled locally, so an enclosing
    ``torch.no_grad()`` is fine). Runs the model in whatever mode it is in: the caller puts the
    teacher in eval (batch-dependent layers in train mode would mix the examples).
    """
    alphas, weights = step_alphas(steps, rule)
    _check_chunk_size(chunk_size)
    inputs = inputs.detach()
    baselines = (
        torch.zeros_like(inputs)
        if baselines is None
        else baselines.detach().to(inputs).expand_as(inputs)
    )
    alphas, weights = alphas.to(inputs), weights.to(inputs)
    diff = inputs - baselines
    chunk = steps if chunk_size is None else chunk_size
    total = torch.zeros_like(inputs)
    for start in range(0, steps, chunk):
        part = slice(start, start + chunk)
        total += _path_gradient_sum(forward, baselines, diff, alphas[part], weights[part])
    attributions = diff * total
    if not completeness:
        return Attribution(attributions, None, None, None)
    batch = inputs.shape[0]
    with torch.no_grad():
        ends = _scalar_per_example(forward(torch.cat([inputs, baselines])), 2 * batch)
    outputs, baseline_outputs = ends[:batch].detach(), ends[batch:].detach()
    gap = attributions.flatten(1).sum(1) - (outputs - baseline_outputs)
    return Attribution(attributions, gap, outputs, baseline_outputs)


def _segments(valid: int, segment_frames: int) -> list[tuple[int, int]]:
    """(start, length) of the consecutive segments tiling ``valid`` frames: full segments of
    ``segment_frames``, a tail shorter than min_tail = segment_frames // 2 merged into the
    previous segment; fewer valid frames than one segment make one segment."""
    full, tail = divmod(valid, segment_frames)
    if full == 0:
        return [(0, valid)] if valid > 0 else []
    spans = [(i * segment_frames, segment_frames) for i in range(full)]
    if 0 < tail < segment_frames // 2:
        start, _ = spans.pop()
        spans.append((start, segment_frames + tail))
    elif tail > 0:
        spans.append((full * segment_frames, tail))
    return spans


def _valid_frames(lens: Tensor, frames: int) -> list[int]:
    """Valid frames per utterance, round(lens·T) clamped to [0, T] (SpeechBrain relative lengths;
    lens (B,))."""
    return torch.round(lens.detach().double().cpu() * frames).clamp(0, frames).long().tolist()


def _segment_batches(
    forward: Callable[[Tensor, Tensor], Tensor], feats: Tensor, lens: Tensor, segment_frames: int
) -> Iterator[tuple[list[tuple[int, int]], Tensor, Callable[[Tensor], Tensor]]]:
    """Per segment length (shortest first): the (row, start) members, their stacked segments
    (n, length, F) and forward on them (x (c·n, length, F) -> (c·n,), step-major rows)."""
    groups: dict[int, list[tuple[int, int]]] = {}
    for row, valid in enumerate(_valid_frames(lens, feats.shape[1])):
        for start, length in _segments(valid, segment_frames):
            groups.setdefault(length, []).append((row, start))
    for length, members in sorted(groups.items()):
        segs = torch.stack([feats[row, start : start + length] for row, start in members])
        rows = torch.tensor([row for row, _ in members], dtype=torch.long, device=feats.device)

        def seg_forward(x: Tensor, rows: Tensor = rows) -> Tensor:
            return forward(x, rows.repeat(x.shape[0] // rows.shape[0]))

        yield members, segs, seg_forward


def segment_gaps(
    forward: Callable[[Tensor, Tensor], Tensor],
    feats: Tensor,
    lens: Tensor,
    segment_frames: int,
    attributions: Tensor,
    baseline: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Completeness of a map from :func:`segment_attributions` (same feats (B, T, F), lens,
    segment_frames and baseline; attributions (B, T, F)), segment by segment: (gap, delta), each
    (n_segments,), gap = Σ_s A − delta and delta = F(s) − F(s′), from one no-grad forward of each
    group's segments and baselines. How far the step rule is from the path integral.
    """
    gaps, deltas = [], []
    with torch.no_grad():
        for members, segs, seg_forward in _segment_batches(forward, feats, lens, segment_frames):
            ends = seg_forward(torch.cat([segs, torch.full_like(segs, baseline)]))
            delta = ends[: len(members)] - ends[len(members) :]
            length = segs.shape[1]
            sums = torch.stack(
                [attributions[row, start : start + length].sum() for row, start in members]
            )
            gaps.append(sums - delta)
            deltas.append(delta)
    return torch.cat(gaps), torch.cat(deltas)


def segment_attributions(
    forward: Callable[[Tensor, Tensor], Tensor],
    feats: Tensor,
    lens: Tensor,
    segment_frames: int,
    steps: int = 20,
    rule: str = "riemann_right",
    chunk_size: int | None = None,
    baseline: float = 0.0,
) -> Tensor:
    """IML-KD's per-duration map A_d (B, T, F) against the constant baseline x′ = ``baseline``
    (0: the "silence" of a sentence-mean-normalised fbank).

    Tiles each utterance's valid frames (feats (B, T, F), lens (B,) relative SpeechBrain lengths,
    valid frames = round(lens·T)) into consecutive segments of ``segment_frames`` frames, computes
    IG of the model on each segment ALONE (the segment is the model's whole input) and stitches the
    segment maps back into (B, T, F); padded frames get 0. forward is (x (N, t, F), rows (N,) long)
    -> (N,), where rows[i] is the utterance (0..B−1) that segment i belongs to, so the caller can
    pick each utterance's target class. Segments of equal length are batched together (all full
    segments of the batch in one :func:`integrated_gradients` call; each distinct other length in
    its own call). A tail shorter than min_tail = segment_frames // 2 (ours) is merged into the
    previous segment; an utterance shorter than one segment is one segment.
    """
    _check_positive_int("segment_frames", segment_frames)
    _check_steps(steps, rule)
    _check_chunk_size(chunk_size)
    maps = torch.zeros_like(feats.detach())
    for members, segs, seg_forward in _segment_batches(forward, feats, lens, segment_frames):
        reference = torch.full_like(segs, baseline) if baseline else None
        attr = integrated_gradients(
            seg_forward, segs, reference, steps, rule, chunk_size, completeness=False
        ).attributions
        for (row, start), seg_map in zip(members, attr):
            maps[row, start : start + segs.shape[1]] = seg_map
    return maps


class IntegratedInput:
    """docs/METHODS.md's integrated input x̃ = x ⊙ (1 + weight), every choice a constructor argument
    (the YAML keys).

    - durations_s: segment durations d (s) of the maps A_d; hop_length_ms: the feature hop that
      turns them into frames;
    - steps, rule, chunk_size: :func:`integrated_gradients`'s; baseline: the constant x′;
    - mode "mean": weight = mean_d norm(|A_d|) (B, T, F); "concat": the normed maps concatenated
      along time (B, len(durations)·T, F), d-th block = rows d·T … (d+1)·T − 1. The single-duration
      ablation is "mean" with one duration.
    - views: what a teacher cache computes the maps on: "per_view" (each cached crop alone, the
      method) or "shared" (once per training segment, cropped to each view:
      :class:`kd_modules.cache_build.SharedViewMaps`); a live teacher always maps its batch.
    norm(|A|) = |A| / max of |A| over the utterance's valid (t, f): per-utterance scaling to [0, 1].
    """

    def __init__(
        self,
        durations_s: tuple[float, ...] | list[float] = (0.5, 1.0, 2.0),
        hop_length_ms: float = 10.0,
        steps: int = 20,
        rule: str = "riemann_right",
        chunk_size: int | None = None,
        mode: str = "mean",
        baseline: float = 0.0,
        views: str = "per_view",
    ):
        if len(durations_s) == 0:
            raise ValueError("durations_s must name at least one segment duration (seconds)")
        if any(d <= 0 for d in durations_s) or hop_length_ms <= 0:
            raise ValueError(
                f"durations_s and hop_length_ms must be > 0, got {list(durations_s)} and "
                f"{hop_length_ms}"
            )
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
        if views not in VIEWS:
            raise ValueError(f"unknown ig_views {views!r}; valid: {', '.join(VIEWS)}")
        _check_steps(steps, rule)
        _check_chunk_size(chunk_size)
        self.durations_s = tuple(float(d) for d in durations_s)
        self.hop_length_ms = float(hop_length_ms)
        self.steps, self.rule, self.chunk_size, self.mode = steps, rule, chunk_size, mode
        self.baseline = float(baseline)
        self.views = views

    def settings(self) -> dict:
        """Every constructor argument by name (lists, JSON-ready): goes into cache keys, and
        ``IntegratedInput(**settings())`` rebuilds the same object. ``views`` is named only when
        "shared", so the caches built before the key existed keep their keys."""
        settings = {
            "durations_s": list(self.durations_s),
            "hop_length_ms": self.hop_length_ms,
            "steps": self.steps,
            "rule": self.rule,
            "chunk_size": self.chunk_size,
            "mode": self.mode,
            "baseline": self.baseline,
        }
        return settings if self.views == "per_view" else {**settings, "views": self.views}

    def segment_frames(self) -> list[int]:
        """Frames per segment, round(d·1000 / hop) for each duration (at least 1)."""
        return [max(1, round(d * 1000 / self.hop_length_ms)) for d in self.durations_s]

    def maps(
        self, forward: Callable[[Tensor, Tensor], Tensor], feats: Tensor, lens: Tensor
    ) -> list[Tensor]:
        """The maps A_d, one (B, T, F) tensor per duration (:func:`segment_attributions`; feats
        (B, T, F), lens (B,) relative)."""
        return [
            segment_attributions(
                forward, feats, lens, frames, self.steps, self.rule, self.chunk_size, self.baseline
            )
            for frames in self.segment_frames()
        ]

    def weight(self, maps: list[Tensor], lens: Tensor) -> Tensor:
        """(B, T', F) weight from the maps A_d (each (B, T, F)): norm(|A_d|) in [0, 1], 1 at each
        utterance's largest |A_d| (an all-zero map stays 0; padded frames 0); "mean": their mean,
        T' = T; "concat": concatenated along time, T' = len(durations)·T."""
        if len(maps) != len(self.durations_s):
            raise ValueError(
                f"expected {len(self.durations_s)} maps (one per duration), got {len(maps)}"
            )
        frames = maps[0].shape[1]
        valid = torch.tensor(_valid_frames(lens, frames), device=maps[0].device)
        mask = (torch.arange(frames, device=valid.device) < valid[:, None]).unsqueeze(-1)
        normed = []
        for attr in maps:
            magnitude = attr.detach().abs() * mask
            peak = magnitude.flatten(1).amax(1).view(-1, 1, 1)
            normed.append(magnitude / peak.clamp_min(torch.finfo(magnitude.dtype).tiny))
        if self.mode == "mean":
            return torch.stack(normed).mean(0)
        return torch.cat(normed, dim=1)

    def apply(self, feats: Tensor, weight: Tensor) -> Tensor:
        """x̃ (B, T·n, F) from feats (B, T, F) and a weight from :meth:`weight`: "mean" (n = 1):
        feats · (1 + weight); "concat" (n = len(durations)): feats repeated n times along time,
        times (1 + weight).

        The weight's time axis may be longer than the feats' (e.g. zero padded by a collate, or
        computed on a longer padded batch): "mean" uses its first T frames; "concat" splits it into
        n equal blocks of T_w ≥ T frames and uses the first T frames of each block, so a concat
        weight must be padded per block (as :meth:`weight` on a padded batch does), never only at
        its end.
        """
        blocks = 1 if self.mode == "mean" else len(self.durations_s)
        batch, frames, bins = feats.shape
        shape_ok = weight.dim() == 3 and (weight.shape[0], weight.shape[2]) == (batch, bins)
        block = weight.shape[1] // blocks if shape_ok else 0
        if not shape_ok or weight.shape[1] % blocks or block < frames:
            raise ValueError(
                f"weight of shape {tuple(weight.shape)} does not fit feats of shape "
                f"{tuple(feats.shape)} in mode {self.mode!r} (needs (B, {blocks}·T_w, F), T_w >= T)"
            )
        used = weight.reshape(batch, blocks, block, bins)[:, :, :frames].reshape(batch, -1, bins)
        return feats.repeat(1, blocks, 1) * (1 + used)

    def __call__(
        self, forward: Callable[[Tensor, Tensor], Tensor], feats: Tensor, lens: Tensor
    ) -> Tensor:
        """The weight (B, T', F) of feats (B, T, F) with lens (B,): :meth:`maps`, then
        :meth:`weight`."""
        return self.weight(self.maps(forward, feats, lens), lens)
