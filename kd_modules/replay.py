"""Seeded augmentation replay: the student trains on exactly the views the cached teacher saw.

:class:`ViewReplay` joins an :class:`~kd_modules.augment.AugmentPolicy`, the clean front end and
a seed. Stage 3 uses :meth:`ViewReplay.make_view` and :meth:`ViewReplay.features` to draw K views
of every training utterance (crop, then time/frequency masks, each from a generator seeded by
(seed, utterance, view)) and run the teacher on them; a KD run's data pipeline uses
:meth:`ViewReplay.dataset_item` to pick the epoch's view of each utterance, read that view's
teacher outputs and parameters from the cache, and crop the waveform the same way, and its Brain
applies the stored masks (:meth:`AugmentPolicy.mask_training`). No teacher runs in the KD run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from speechbrain.utils.data_pipeline import provides, takes
from torch import nn

from kd_modules.augment import AugmentPolicy, epoch_view, view_generator
from kd_modules.cache import TeacherCache


class FrontEnd(nn.Module):
    """The clean features of a recipe: ``normalize(features(wavs), lens)``, ``(B, S) -> (B, T, F)``.

    One object for training, the cache stage and its checks, so cached teacher outputs are
    computed on exactly the features a KD run feeds the student. In a padded batch each clip
    keeps the frames it has alone: :meth:`frame_lengths` counts them from its samples and the
    STFT's hop (``S // hop + 1`` when centred), and the normalisation averages over exactly those.
    Rounding the waveform's relative length to frames instead (``round(lens * T)``) counts one
    frame too many or too few for about a quarter of the clips of a typical batch, which shifts
    their sentence mean, so a clip's features would depend on the batch it is in.
    """

    def __init__(self, features: nn.Module, normalize: nn.Module) -> None:
        super().__init__()
        self.features, self.normalize = features, normalize

    def forward(self, wavs: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        return self.features_and_lengths(wavs, lens)[0]

    def features_and_lengths(
        self, wavs: torch.Tensor, lens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features ``(B, T, F)`` and their relative frame lengths ``(B,)`` (see frame_lengths)."""
        feats = self.features(wavs)
        frame_lens = self.frame_lengths(lens, wavs.shape[1], feats.shape[1])
        return self.normalize(feats, frame_lens), frame_lens

    def frame_lengths(self, lens: torch.Tensor, n_samples: int, n_frames: int) -> torch.Tensor:
        """Relative frame lengths ``(B,)`` of clips with relative sample lengths ``lens``.

        Each clip has ``n = S // hop + 1`` frames (``(S - n_fft) // hop + 1`` without centring)
        of ``n_frames``; returned as ``(n - 0.25) / n_frames``, which every counting convention in
        use turns back into ``n``: ``round(l * T)`` (this library, SpeechBrain's pooling),
        ``ceil(l * T - 1e-6)`` (SpeechBrain's normalisation) and ``t < l * T`` masks. A feature
        extractor without a SpeechBrain STFT (``compute_STFT``) keeps ``round(lens * n_frames)``.
        """
        stft = getattr(self.features, "compute_STFT", None)
        if stft is None:
            counts = torch.round(lens.float() * n_frames)
        else:
            samples = torch.round(lens.float() * n_samples).long()
            if not stft.center:
                samples = samples - stft.n_fft
            counts = torch.div(samples, stft.hop_length, rounding_mode="floor") + 1
        counts = counts.clamp(1, n_frames).to(lens.device, torch.float32)
        return (counts - 0.25) / n_frames


class ViewReplay:
    """Draws (stage 3) and replays (KD runs) the seeded views of each utterance.

    Arguments
    ---------
    policy : AugmentPolicy
        The random transforms (the same object the live runs use).
    front_end : callable
        ``(wavs (B, S), lens (B,)) -> feats (B, T, F)``, the clean features.
    seed : int
        Seeds every view's draw; part of the cache key.
    n_views : int
        K, the number of views stored per utterance (an epoch shows one of them).
    """

    def __init__(self, policy: AugmentPolicy, front_end: Callable, seed: int, n_views: int):
        self.policy, self.front_end = policy, front_end
        self.seed = int(seed)
        self.n_views = int(n_views) if policy.active else 1  # one clean view is all there is
        self.epoch = 1  # set by the Brain at the start of each training epoch

    def settings(self) -> dict:
        """What changes the stored views (part of the cache key)."""
        return {**self.policy.settings(), "seed": self.seed, "n_views": self.n_views}

    # ----- stage 3: drawing views --------------------------------------------------------------
    def make_view(self, utt_id: str, sig: torch.Tensor, view: int) -> tuple:
        """The view's waveform (cropped) and its generator, positioned after the crop draw."""
        generator = view_generator(self.seed, utt_id, view)
        start = self.policy.draw_crop(generator, sig.numel())
        return self.policy.crop(sig, start), (generator, start)

    @torch.no_grad()
    def features(self, batch: list, device: str | torch.device = "cpu") -> tuple:
        """Features ``(B, T, F)`` and parameters ``(B, P)`` of same-length views.

        ``batch`` holds ``(utt_id, view, waveform, (generator, crop_start))`` entries as
        :func:`kd_modules.cache_build.build_teacher_cache` groups them; masks are drawn from each
        view's own generator for its frame count, so the draw never depends on the batch.
        """
        wavs = torch.stack([wave for _, _, wave, _ in batch]).to(device)
        feats = self.front_end(wavs, torch.ones(len(batch), device=device))
        rows = []
        for _, _, _, (generator, start) in batch:
            rows.append([start, *self.policy.draw_masks(generator, *feats.shape[1:])])
        params = torch.tensor(rows, dtype=torch.long)
        return self.policy.mask(feats, params), params

    # ----- KD runs: replaying views ------------------------------------------------------------
    def view_of(self, utt_id: str) -> int:
        """The view an utterance shows in the current epoch."""
        return epoch_view(self.seed, utt_id, self.epoch, self.n_views)

    def dataset_item(self, cache: TeacherCache):
        """SpeechBrain dynamic item: ``id`` -> ``aug_params`` and ``teacher_<name>`` (every cached
        output) of the utterance's view in the current epoch, read from the cache.

        The Brain crops the waveform and masks the features with these parameters
        (:meth:`AugmentPolicy.crop_training`, :meth:`AugmentPolicy.mask_training`). A clip
        that stage 3 could not read gives empty tensors: its ``sig`` is empty too and the collate
        function drops it, as without a cache.
        """
        names = list(cache.names)

        @takes("id")
        @provides("aug_params", *(f"teacher_{name}" for name in names))
        def replay(utt_id: str):
            if cache.unreadable(utt_id):
                yield torch.zeros(self.policy.param_size, dtype=torch.long)
                for _ in names:
                    yield torch.zeros(0)
                return
            outputs, params = cache.read(utt_id, self.view_of(utt_id), dtype=None)
            yield params
            for name in names:
                yield outputs[name]

        return replay

    def attach(self, dataset, cache: TeacherCache) -> None:
        """Add the cached views to a SpeechBrain ``DynamicItemDataset`` (the training split)."""
        dataset.add_dynamic_item(self.dataset_item(cache))
        keys = ["aug_params", *(f"teacher_{name}" for name in cache.names)]
        dataset.set_output_keys({**dataset.pipeline.output_mapping, **{key: key for key in keys}})


class CacheMismatchError(RuntimeError):
    """The live teacher disagrees with what the cache stored for the same view."""


def verify_cache(
    cache: TeacherCache,
    teacher: Callable[[torch.Tensor, torch.Tensor], dict],
    replay: ViewReplay,
    signals: dict[str, torch.Tensor],
    device: str | torch.device = "cpu",
    rtol: float = 1e-2,
    targets: dict[str, int] | None = None,
    views: Callable[[list], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> float:
    """Re-run the live teacher on the given cached utterances (one random view each) and compare.

    ``signals`` maps utterance ids to their waveforms ``(S,)`` as the cache stage read them. Each
    view is rebuilt from its seed (which must give the stored parameters) and every output must
    match the stored one within ``rtol`` of its largest magnitude (half-precision storage keeps
    about 3 significant digits). Returns the largest relative error; raises CacheMismatchError
    naming the utterance, view and output otherwise. ``targets`` (utterance id -> class) go to
    a teacher whose outputs depend on the true class. ``views`` (a batch of views -> the
    teacher's input and the parameters, :func:`kd_modules.teacher.teacher_views`) defaults to
    :meth:`ViewReplay.features`.
    """
    worst = 0.0
    for utt_id, sig in signals.items():
        view = replay.view_of(utt_id)
        stored, stored_params = cache.read(utt_id, view)
        wave, state = replay.make_view(utt_id, sig, view)
        entry = [(utt_id, view, wave, state)]
        feats, params = views(entry) if views is not None else replay.features(entry, device)
        if not torch.equal(params[0], stored_params):
            raise CacheMismatchError(
                f"Utterance {utt_id!r}, view {view}: the seed gives augmentation parameters "
                f"{params[0].tolist()} but the cache stored {stored_params.tolist()} (another "
                "augmentation policy or seed): rebuild the cache"
            )
        ones = torch.ones(1, device=device)
        if targets is None:
            live = teacher(feats, ones)
        else:
            live = teacher(feats, ones, torch.tensor([targets[utt_id]], device=device))
        for name in cache.names:
            reference = live[name][0].float().cpu()
            if name == "logits" and cache.meta.get("topk"):
                k = cache.meta["topk"]
                reference, got = reference.topk(k).values, stored[name].topk(k).values
            else:
                got = stored[name]
            scale = reference.abs().max().clamp_min(1e-6)
            same_shape = reference.shape == got.shape
            error = float((reference - got).abs().max() / scale) if same_shape else float("inf")
            worst = max(worst, error)
            if error > rtol:
                raise CacheMismatchError(
                    f"Teacher cache {cache.folder}: utterance {utt_id!r}, view {view}, output "
                    f"{name!r} differs from the live teacher (relative error {error:.3g} > "
                    f"{rtol:g}): the cache was built by another teacher or front end, or is "
                    "corrupt. Delete the folder and rerun stage 3."
                )
    return worst
