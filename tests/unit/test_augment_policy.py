"""The augment policy applies a training batch's crop, masks and mixup (kd_modules.augment), on
real FSDD clips: replayed parameters give each clip of a padded batch the view the cache stage
makes of it alone, fresh draws stay inside each clip, and mixup is drawn per batch from the
YAML's ``mixup_alpha`` without entering the views' settings (the teacher cache key)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import FSDD_CLIPS, RECIPE
from speechbrain.lobes.features import Fbank

from kd_modules.augment import AugmentPolicy, Mixing, view_generator
from kd_modules.dataio import read_audio
from kd_modules.hparams import load_composed

CROP = 6400  # 0.4 s at 16 kHz: shorter than most FSDD clips, longer than a few


@pytest.fixture(scope="module")
def clips() -> list[torch.Tensor]:
    """Four real clips of different lengths, one of them shorter than the crop."""
    paths = sorted(FSDD_CLIPS.glob("*.flac"))
    signals = sorted((read_audio(path, 16000) for path in paths[:40]), key=len)
    chosen = [signals[0], signals[10], signals[25], signals[-1]]
    assert len(chosen[0]) < CROP < len(chosen[1]) and len({len(s) for s in chosen}) == 4
    return chosen


def padded(signals: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch ``(B, S)`` and its relative lengths ``(B,)``, as SpeechBrain collates."""
    longest = max(len(s) for s in signals)
    wavs = torch.stack([F.pad(s, (0, longest - len(s))) for s in signals])
    return wavs, torch.tensor([len(s) / longest for s in signals])


def test_replayed_crop_gives_each_clip_its_cached_view(clips):
    policy = AugmentPolicy(random_crop=True, crop_samples=CROP, spec_masks=True)
    starts = [policy.draw_crop(view_generator(7, str(i), 0), len(s)) for i, s in enumerate(clips)]
    stored = torch.zeros(len(clips), policy.param_size, dtype=torch.long)
    stored[:, 0] = torch.tensor(starts)
    cropped, lens = policy.crop_training(*padded(clips), stored)
    assert cropped.shape == (len(clips), CROP)
    for row, (signal, start) in enumerate(zip(clips, starts)):
        view = policy.crop(signal, start)  # what the cache stage's teacher saw
        n = round(float(lens[row]) * cropped.shape[1])
        assert n == len(view) and torch.equal(cropped[row, :n], view)
        assert not cropped[row, n:].any()


def test_fresh_crops_are_windows_inside_each_clip(clips):
    policy = AugmentPolicy(random_crop=True, crop_samples=CROP)
    torch.manual_seed(0)
    cropped, lens = policy.crop_training(*padded(clips))
    for row, signal in enumerate(clips):
        n = round(float(lens[row]) * cropped.shape[1])
        assert n == min(len(signal), CROP)
        window = cropped[row, :n]
        starts = [i for i in range(len(signal) - n + 1) if torch.equal(signal[i : i + n], window)]
        assert starts, f"clip {row}: the crop is not a window of the clip"
    assert AugmentPolicy().crop_training(*padded(clips))[0].shape[1] == max(map(len, clips))


def test_masks_replay_the_stored_ones_and_fresh_time_masks_stay_in_valid_frames(clips):
    policy = AugmentPolicy(spec_masks=True, time_masks=(2, 3), freq_masks=(1, 2))
    wavs, lens = padded(clips)
    feats = Fbank(n_mels=40)(wavs) + 1.0  # (B, T, 40); +1: no bin is 0 before masking
    stored = policy.live_masks(lens, feats.shape[1], feats.shape[2])
    assert torch.equal(policy.mask_training(feats, lens, stored), policy.mask(feats, stored))
    time_only = AugmentPolicy(spec_masks=True, time_masks=(2, 3), freq_masks=(0, 0))
    torch.manual_seed(1)
    changed = time_only.mask_training(feats, lens) != feats  # (B, T, F)
    for row in range(len(clips)):
        valid = max(round(float(lens[row]) * feats.shape[1]), 1)
        assert changed[row, :valid].any() and not changed[row, valid:].any()


def test_mixup_is_drawn_per_batch_from_the_yaml_and_is_no_part_of_a_view(tmp_path):
    def policy(alpha: float) -> AugmentPolicy:
        values = {
            "data_folder": str(tmp_path),
            "output_folder": str(tmp_path / "run"),
            "exp_root": str(tmp_path),
            "n_classes": 10,
            "mixup_alpha": alpha,
        }
        names = ("common.yaml", "student/xvector_small.yaml", "kd/none.yaml")
        return load_composed([RECIPE / "hparams" / name for name in names], values)["augmentation"]

    mixing, plain = policy(0.4), policy(0.0)
    assert mixing.mixup_alpha == 0.4 and mixing.settings() == plain.settings()
    assert plain.draw_mixup(8) is None and mixing.draw_mixup(1) is None
    torch.manual_seed(2)
    drawn = mixing.draw_mixup(8)
    assert isinstance(drawn, Mixing) and 0.0 < drawn.lam < 1.0
    assert sorted(drawn.perm.tolist()) == list(range(8))


def test_mixing_mixes_inputs_and_the_task_loss_with_one_pairing(clips):
    mixing = Mixing(0.7, torch.tensor([2, 0, 3, 1]))
    wavs, _ = padded(clips)
    torch.testing.assert_close(mixing.inputs(wavs)[1], 0.7 * wavs[1] + 0.3 * wavs[0])
    logits, targets = torch.randn(4, 10), torch.tensor([3, 1, 4, 1])
    loss = mixing.loss(lambda labels: F.cross_entropy(logits, labels), targets)
    expected = 0.7 * F.cross_entropy(logits, targets) + 0.3 * F.cross_entropy(
        logits, targets[[2, 0, 3, 1]]
    )
    torch.testing.assert_close(loss, expected)
