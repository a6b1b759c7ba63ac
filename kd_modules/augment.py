"""Replayable input augmentation: every random draw is explicit parameters, seeded per view.

KD works best when the student sees exactly the augmented view the teacher saw (CED, TinyViT).
With a live teacher that is automatic; with a teacher cache it needs the view to be *replayable*:
the cache stage draws, for each utterance and each of K views, the parameters of the transforms
(a crop start, the time and frequency masks) from a generator seeded by (seed, utterance, view),
stores them next to the teacher's outputs on that view, and a KD run applies the same parameters
to the student's input. The same classes draw fresh parameters for live training (teachers,
students alone, KD with a live teacher), so all runs share one augmentation policy.

Parameters of one view are one int64 vector ``(P,)`` (:meth:`AugmentPolicy.param_size`):
``[crop_start, t_start_1, t_width_1, ..., f_start_1, f_width_1, ...]``; an unused mask has width 0.
A training batch goes through :meth:`AugmentPolicy.crop_training` (waveforms) and
:meth:`AugmentPolicy.mask_training` (features), with the parameters a cached batch carries or
fresh ones. Mixup pairs clips within a batch (:meth:`AugmentPolicy.draw_mixup`, a
:class:`Mixing`): the student's inputs, the teacher's outputs (live or cached, :func:`mix`) and
the task loss's targets share the pairing and λ. It is drawn per batch, not per view, so it is no
part of a view's settings (nor of the teacher cache key).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import torch


def view_generator(seed: int, utt_id: str, view: int) -> torch.Generator:
    """A CPU generator seeded by (seed, utterance id, view): the same draw on every machine."""
    digest = hashlib.sha256(f"{seed}|{utt_id}|{view}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def epoch_view(seed: int, utt_id: str, epoch: int, n_views: int) -> int:
    """Which of the ``n_views`` cached views an utterance shows in ``epoch`` (seeded, uniform)."""
    digest = hashlib.sha256(f"{seed}|{utt_id}|epoch{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % n_views


def _randint(generator: torch.Generator | None, low: int, high: int) -> int:
    """An integer in [low, high] (both included); ``None``: torch's global generator."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


class AugmentPolicy:
    """Random crop of the waveform plus SpecAugment-style time and frequency masks.

    Arguments
    ---------
    random_crop : bool
        Train on random ``crop_samples`` windows (clips not longer than it are kept whole).
    crop_samples : int
        Length of the random crop, in samples.
    spec_masks : bool
        Zero random time and frequency bands of the features (SpecAugment-style).
    time_masks, freq_masks : tuple[int, int]
        Inclusive range of the number of masks along time (frames) and frequency (bins).
    time_width, freq_width : tuple[int, int]
        Inclusive range of one mask's width.
    mixup_alpha : float
        > 0: mixup of the training batch, λ ~ Beta(alpha, alpha) (0: off).
    """

    def __init__(
        self,
        random_crop: bool = False,
        crop_samples: int = 0,
        spec_masks: bool = False,
        time_masks: tuple[int, int] = (1, 3),
        time_width: tuple[int, int] = (5, 19),
        freq_masks: tuple[int, int] = (1, 2),
        freq_width: tuple[int, int] = (2, 7),
        mixup_alpha: float = 0.0,
    ) -> None:
        self.crop_samples = int(crop_samples) if random_crop else 0
        self.mixup_alpha = float(mixup_alpha or 0.0)
        off = (0, 0)
        self.time_masks = tuple(time_masks) if spec_masks else off
        self.freq_masks = tuple(freq_masks) if spec_masks else off
        self.time_width, self.freq_width = tuple(time_width), tuple(freq_width)

    @property
    def active(self) -> bool:
        """Whether the policy changes anything at all."""
        return bool(self.crop_samples or self.time_masks[1] or self.freq_masks[1])

    @property
    def param_size(self) -> int:
        """P, the length of one view's parameter vector."""
        return 1 + 2 * self.time_masks[1] + 2 * self.freq_masks[1]

    def settings(self) -> dict:
        """Everything that changes a view (part of the teacher cache key)."""
        return {
            "crop_samples": self.crop_samples,
            "time_masks": list(self.time_masks),
            "time_width": list(self.time_width),
            "freq_masks": list(self.freq_masks),
            "freq_width": list(self.freq_width),
        }

    def draw_crop(self, generator: torch.Generator | None, n_samples: int) -> int:
        """Start of the crop of a clip of ``n_samples`` samples (0 without a crop)."""
        if not self.crop_samples or n_samples <= self.crop_samples:
            return 0
        return _randint(generator, 0, n_samples - self.crop_samples)

    @staticmethod
    def _axis(generator, counts, widths, size: int) -> list[int]:
        """``[start, width] * max_count`` for one axis of ``size`` bins (unused masks: width 0)."""
        values = []
        count = _randint(generator, *counts)
        for index in range(counts[1]):
            width = min(_randint(generator, *widths), size) if index < count else 0
            start = _randint(generator, 0, size - width) if width else 0
            values += [start, width]
        return values

    def draw_masks(self, generator: torch.Generator | None, n_frames: int, n_bins: int) -> list:
        """Time and frequency masks of a view of ``n_frames`` frames and ``n_bins`` bins."""
        return self._axis(generator, self.time_masks, self.time_width, n_frames) + self._axis(
            generator, self.freq_masks, self.freq_width, n_bins
        )

    def live_masks(self, lens: torch.Tensor, n_frames: int, n_bins: int) -> torch.Tensor:
        """Fresh parameters ``(B, P)`` for a padded batch (torch's global generator, seeded by the
        run's seed); each clip's masks fall inside its own valid frames."""
        rows = []
        for rel in lens.tolist():
            valid = max(int(round(rel * n_frames)), 1)
            rows.append([0, *self.draw_masks(None, valid, n_bins)])
        return torch.tensor(rows, dtype=torch.long)

    def crop(self, sig: torch.Tensor, start: int) -> torch.Tensor:
        """The crop of a waveform ``(S,)`` starting at ``start`` (unchanged without a crop)."""
        if not self.crop_samples or sig.numel() <= self.crop_samples:
            return sig
        return sig[start : start + self.crop_samples]

    def crop_batch(
        self, wavs: torch.Tensor, n_samples: torch.Tensor, starts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Crop each clip of a padded batch: wavs ``(B, S)``; valid samples, crop starts ``(B,)``.

        Returns the cropped batch ``(B, L)`` with ``L = min(crop, longest clip)`` and the new
        relative lengths; clips not longer than the crop are kept whole (zero-padded).
        """
        if not self.crop_samples:
            return wavs, n_samples.float() / wavs.shape[1]
        length = min(self.crop_samples, int(n_samples.max()))
        out = wavs.new_zeros(wavs.shape[0], length)
        kept = n_samples.clamp(max=self.crop_samples)
        for row, (start, size) in enumerate(zip(starts.tolist(), kept.tolist())):
            start = start if n_samples[row] > self.crop_samples else 0
            out[row, :size] = wavs[row, start : start + size]
        return out, kept.float() / length

    def crop_training(
        self, wavs: torch.Tensor, lens: torch.Tensor, stored: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch's waveforms ``(B, S)`` through the random crop: ``(wavs, lens)``.

        A batch that replays cached views crops at their stored starts (``stored``, the views'
        parameters ``(B, P)``); otherwise each start is drawn afresh (torch's global generator,
        seeded by the run's seed) inside the clip's own samples.
        """
        if not self.crop_samples:
            return wavs, lens
        n_samples = (lens * wavs.shape[1]).round().long()
        if stored is not None:
            starts = stored[:, 0]
        else:
            starts = torch.tensor([self.draw_crop(None, int(n)) for n in n_samples])
        return self.crop_batch(wavs, n_samples, starts)

    def mask_training(
        self, feats: torch.Tensor, lens: torch.Tensor, stored: torch.Tensor | None = None
    ) -> torch.Tensor:
        """A training batch's features ``(B, T, F)`` through the time/frequency masks.

        A batch that replays cached views carries their parameters (``stored``, ``(B, P)``), so
        the student gets exactly the teacher's view; otherwise masks are drawn afresh inside each
        clip's valid frames (drawn even with no masks configured: the global generator then
        advances as it always has, which keeps seeded runs reproducible).
        """
        if stored is None:
            stored = self.live_masks(lens, feats.shape[1], feats.shape[2])
        return self.mask(feats, stored)

    def draw_mixup(self, batch_size: int, device=None) -> Mixing | None:
        """The mixup of a training batch of ``batch_size`` clips (None: off, or a single clip)."""
        if self.mixup_alpha <= 0 or batch_size < 2:
            return None
        alpha = self.mixup_alpha
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        return Mixing(lam, torch.randperm(batch_size, device=device))

    def mask(self, feats: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Zero the views' time and frequency masks: feats ``(B, T, F)``, params ``(B, P)``."""
        if not (self.time_masks[1] or self.freq_masks[1]):
            return feats
        keep = torch.ones_like(feats, dtype=torch.bool)
        n_time = self.time_masks[1]
        frames = torch.arange(feats.shape[1], device=feats.device)
        bins = torch.arange(feats.shape[2], device=feats.device)
        params = params.to(feats.device)
        for index in range(n_time):
            start, width = params[:, 1 + 2 * index], params[:, 2 + 2 * index]
            hit = (frames >= start[:, None]) & (frames < (start + width)[:, None])  # (B, T)
            keep &= ~hit[:, :, None]
        for index in range(self.freq_masks[1]):
            start = params[:, 1 + 2 * n_time + 2 * index]
            width = params[:, 2 + 2 * n_time + 2 * index]
            hit = (bins >= start[:, None]) & (bins < (start + width)[:, None])  # (B, F)
            keep &= ~hit[:, None, :]
        return feats * keep


def mix(tensors: dict, lam: float, perm: torch.Tensor) -> dict:
    """Mixup of every floating tensor ``(B, ...)`` of a dict: ``lam·x_i + (1 − lam)·x_perm[i]``.

    Used for the teacher's outputs (live or cached: logits, embeddings, tapped features) with the
    pairing and λ of the inputs, as CED mixes cached teacher targets; integer tensors stay as are.
    """
    return {
        name: lam * value + (1.0 - lam) * value[perm] if value.is_floating_point() else value
        for name, value in tensors.items()
    }


@dataclass(frozen=True)
class Mixing:
    """The mixup of one batch: clip ``i`` becomes ``lam·x_i + (1 − lam)·x_perm[i]``.

    ``perm`` ``(B,)`` pairs the clips; inputs, teacher outputs and targets are mixed alike.
    """

    lam: float
    perm: torch.Tensor

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Mixed inputs (or soft targets) ``(B, ...)``."""
        return self.lam * x + (1.0 - self.lam) * x[self.perm]

    def outputs(self, tensors: dict) -> dict:
        """The teacher's outputs (name -> ``(B, ...)``) mixed like the inputs (:func:`mix`)."""
        return mix(tensors, self.lam, self.perm)

    def loss(
        self, loss_fn: Callable[[torch.Tensor], torch.Tensor], targets: torch.Tensor
    ) -> torch.Tensor:
        """Mixup's task loss on hard ``targets`` ``(B, ...)``: λ·L(targets) + (1 − λ)·L(paired)."""
        return self.lam * loss_fn(targets) + (1.0 - self.lam) * loss_fn(targets[self.perm])
