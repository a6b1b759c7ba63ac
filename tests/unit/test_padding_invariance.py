"""A clip's features and model outputs in a padded batch are its own (what a teacher cache stores).

The teacher cache stores each view's teacher outputs computed on the view alone; a live teacher
or a student sees the view in a zero-padded batch. Both must agree, or KD from the cache and KD
from the live teacher learn from different targets. Checked on real clips of different lengths
(FSDD digits and an ESC-50 clip, cut to lengths that exercise every rounding case).
"""

from pathlib import Path

import pytest
import torch
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
from speechbrain.nnet.CNN import Conv1d

from kd_modules.dataio import read_audio
from kd_modules.hparams import load_composed
from kd_modules.models import EmbeddingClassifier, FiniteStatisticsPooling
from kd_modules.models.padding import LengthAwareConv1d, use_length_aware_convs
from kd_modules.teacher import fingerprint_module

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "sound_classification"
FSDD = REPO / "tests" / "samples" / "fsdd" / "free-spoken-digit-dataset" / "recordings"
ESC_CLIP = REPO / "tests" / "samples" / "esc50" / "ESC-50-master" / "audio" / "4-183992-A-0.flac"
RATE = 16000


def _recipe(tmp_path: Path, arch_file: str) -> dict:
    files = [RECIPE / "hparams" / f for f in ("common.yaml", arch_file, "kd/none.yaml")]
    folders = {"data_folder": str(tmp_path), "output_folder": str(tmp_path / "exp")}
    return load_composed(files, {**folders, "n_classes": 10})


def _clips() -> list[torch.Tensor]:
    """Real waveforms of 0.3-1.5 s; lengths chosen off the hop grid (160 samples) on purpose."""
    digits = [read_audio(path, RATE) for path in sorted(FSDD.glob("*.flac"))[:5]]
    clips = [digits[0], digits[1][:7322], digits[2][:4801], digits[3][:5119], digits[4]]
    return [*clips, read_audio(ESC_CLIP, RATE)[24000:48017]]


def _padded(clips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return PaddedBatch([{"id": str(i), "sig": sig} for i, sig in enumerate(clips)]).sig


def _assert_outputs_as_alone(model, front_end) -> None:
    """``model``'s logits and embedding on the padded batch of :func:`_clips` equal each clip's
    outputs alone (relative 1e-4), in eval mode after three training passes set BatchNorm's
    running statistics."""
    clips = _clips()
    feats, frame_lens = front_end.features_and_lengths(*_padded(clips))
    with torch.no_grad():
        model.train()
        for _ in range(3):
            model(feats, frame_lens)
        model.eval()
        batched = model(feats, frame_lens)
        for index, sig in enumerate(clips):
            alone = model(front_end(sig.unsqueeze(0), torch.ones(1)), torch.ones(1))
            for name in ("logits", "embedding"):
                scale = alone[name].abs().max()
                error = (batched[name][index] - alone[name][0]).abs().max() / scale
                assert error < 1e-4, f"clip {index}, {name} off by {error:.2g}"


def test_front_end_counts_and_normalises_each_clips_own_frames(tmp_path):
    front_end = _recipe(tmp_path, "student/xvector_small.yaml")["front_end"]
    clips = _clips()
    feats, frame_lens = front_end.features_and_lengths(*_padded(clips))
    n_frames = feats.shape[1]
    for index, sig in enumerate(clips):
        alone = front_end(sig.unsqueeze(0), torch.ones(1))[0]
        counted = int(torch.round(frame_lens[index] * n_frames))
        assert counted == alone.shape[0], f"clip {index}: {counted} frames in the batch"
        assert torch.ceil(frame_lens[index] * n_frames - 1e-6) == alone.shape[0]
        torch.testing.assert_close(feats[index, :counted], alone, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "arch_file",
    [
        "teacher/xvector_large.yaml",
        "teacher/cnn.yaml",
        "teacher/ensemble.yaml",
        "student/xvector_small.yaml",
    ],
)
def test_model_outputs_in_a_padded_batch_equal_each_clip_alone(tmp_path, monkeypatch, arch_file):
    """Eval mode, BatchNorm statistics from a few training passes on the same real clips.

    SpeechBrain's statistics pooling adds random noise of about 1e-5 to every mean, in eval mode
    too; it is switched off here so that 1e-4 separates equal from batch-dependent outputs."""
    monkeypatch.setattr(
        FiniteStatisticsPooling, "_get_gauss_noise", lambda self, shape, device: torch.zeros(shape)
    )
    torch.manual_seed(0)
    hparams = _recipe(tmp_path, arch_file)
    _assert_outputs_as_alone(hparams["model"], hparams["front_end"])


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "constant"])
@pytest.mark.parametrize("skip_transpose", [False, True])
def test_length_aware_conv_pads_each_clip_as_alone(padding_mode, skip_transpose):
    torch.manual_seed(0)
    conv = Conv1d(
        8,
        kernel_size=5,
        dilation=3,
        in_channels=4,
        padding_mode=padding_mode,
        skip_transpose=skip_transpose,
    )
    counts, n_frames = [20, 13, 30, 29, 31], 31  # 30, 29: closer to the end than the reach
    x = torch.randn(len(counts), n_frames, 4)
    before = fingerprint_module(conv)
    use_length_aware_convs(conv)
    assert isinstance(conv, LengthAwareConv1d) and fingerprint_module(conv) == before
    layout = (lambda t: t.transpose(1, 2)) if skip_transpose else (lambda t: t)
    lens = torch.tensor(counts) / n_frames
    batched = layout(conv(layout(x), lengths=lens))
    for index, count in enumerate(counts):
        alone = layout(conv(layout(x[index : index + 1, :count])))[0]
        torch.testing.assert_close(batched[index, :count], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(conv(layout(x)), Conv1d.forward(conv, layout(x)))  # no lengths


def test_ecapa_classifier_in_a_padded_batch_equals_each_clip_alone(tmp_path):
    """ECAPA's blocks call their convolutions without lengths: batch_lengths() supplies them."""
    torch.manual_seed(0)
    front_end = _recipe(tmp_path, "student/xvector_small.yaml")["front_end"]
    encoder = ECAPA_TDNN(40, channels=[32, 32, 32, 32, 96], lin_neurons=16, attention_channels=16)
    model = EmbeddingClassifier(encoder, embedding_dim=16, n_classes=10)
    _assert_outputs_as_alone(model, front_end)
