"""Very short clips: finite statistics pooling, and the recipe's models at its minimum duration."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.lobes.models.Xvector import Xvector
from speechbrain.nnet.pooling import StatisticsPooling

from kd_modules.dataio import read_audio
from kd_modules.hparams import load_composed
from kd_modules.models import EmbeddingClassifier, FiniteStatisticsPooling
from recipes.sound_classification.local import prepare

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "sound_classification"
SAMPLES = REPO / "tests" / "samples"
LONG_CLIP = SAMPLES / "esc50" / "ESC-50-master" / "audio" / "4-183992-A-0.flac"  # 5 s dog bark
SHORT_SOURCE = SAMPLES / "fsdd" / "free-spoken-digit-dataset" / "recordings" / "1_george_12.flac"
RATE = 16000


def _min_duration_s() -> float:
    """The default of prepare.py's --min_duration_s (the recipe's policy)."""
    return prepare.MIN_DURATION_S


def _recipe_hparams(folder: Path, arch_file: str) -> dict:
    """common.yaml + one architecture + kd/none.yaml, placeholders filled for ``folder``."""
    files = [RECIPE / "hparams" / f for f in ("common.yaml", arch_file, "kd/none.yaml")]
    overrides = {"data_folder": str(folder), "output_folder": str(folder / "exp"), "n_classes": 10}
    return load_composed(files, overrides)


def _batch(*signals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-padded waveforms ``(B, S)`` and relative lengths ``(B,)``, as training batches them."""
    return PaddedBatch([{"id": str(i), "sig": s} for i, s in enumerate(signals)]).sig


def _assert_finite_step(model, front_end, wavs, lens) -> None:
    """Forward, cross-entropy and backward of a training step; everything must be finite."""
    model.train()
    model.zero_grad()
    out = model(front_end(wavs, lens), lens)
    targets = torch.arange(wavs.shape[0]) % out["logits"].shape[1]
    loss = F.cross_entropy(out["logits"], targets)
    loss.backward()
    assert torch.isfinite(out["logits"]).all() and torch.isfinite(out["embedding"]).all()
    assert torch.isfinite(loss)
    for name, param in model.named_parameters():
        assert param.grad is None or torch.isfinite(param.grad).all(), name
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(front_end(wavs, lens), lens)["logits"]).all()


# --- the library: statistics pooling -------------------------------------------------------


def test_finite_pooling_equals_speechbrain_on_normal_lengths():
    x = torch.randn(3, 50, 8)
    lens = torch.tensor([1.0, 0.7, 0.31])
    torch.manual_seed(0)
    expected = StatisticsPooling()(x, lens)
    torch.manual_seed(0)
    got = FiniteStatisticsPooling()(x, lens)
    assert got.shape == (3, 1, 16)
    assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("valid_frames", [0.4, 1.0, 2.0])
def test_finite_pooling_on_one_or_no_valid_frame(valid_frames):
    """0.4 of a frame rounds to none, which SpeechBrain turns into NaN; so does one frame."""
    x = torch.randn(2, 40, 8, requires_grad=True)
    lens = torch.tensor([1.0, valid_frames / 40])
    pooled = FiniteStatisticsPooling()(x, lens)
    pooled.sum().backward()
    assert torch.isfinite(pooled).all() and torch.isfinite(x.grad).all()
    frames = max(1, round(valid_frames))
    assert torch.allclose(pooled[1, 0, :8], x[1, :frames].mean(0), atol=1e-4)
    if frames == 1:
        assert torch.allclose(pooled[1, 0, 8:], torch.full((8,), 2e-5))


def test_finite_pooling_gradient_on_constant_frames():
    """torch.std's gradient is NaN where every frame is equal (silence); ours is finite."""
    x = torch.ones(1, 10, 4, requires_grad=True)
    FiniteStatisticsPooling()(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_classifier_with_a_160_sample_clip_in_a_batch_is_finite(tmp_path):
    """The reported NaN: 0.01 s next to 5 s is 0.002 * 501 -> 1 frame in the pooling's std."""
    model = EmbeddingClassifier(
        Xvector(
            tdnn_blocks=2,
            tdnn_channels=[16, 16],
            tdnn_kernel_sizes=[5, 3],
            tdnn_dilations=[1, 2],
            lin_neurons=8,
            in_channels=40,
        ),
        embedding_dim=8,
        n_classes=3,
    )
    hparams = _recipe_hparams(tmp_path, "student/xvector_small.yaml")
    front_end = hparams["front_end"]
    wavs, lens = _batch(read_audio(LONG_CLIP, RATE), read_audio(SHORT_SOURCE, RATE)[:160])
    _assert_finite_step(model, front_end, wavs, lens)


# --- the recipe: teacher and student at the minimum duration prepare accepts ---------------


@pytest.mark.parametrize("arch_file", ["teacher/xvector_large.yaml", "student/xvector_small.yaml"])
def test_recipe_models_are_finite_at_the_minimum_duration(tmp_path, arch_file):
    hparams = _recipe_hparams(tmp_path, arch_file)
    front_end = hparams["front_end"]
    samples = round(_min_duration_s() * RATE)
    short = read_audio(SHORT_SOURCE, RATE)[:samples]
    assert short.numel() == samples and short.abs().max() > 0  # real speech, not padding
    long = read_audio(LONG_CLIP, RATE)[: int(hparams["max_duration_s"] * RATE)]
    _assert_finite_step(hparams["model"], front_end, *_batch(short))
    wavs, lens = _batch(long, short)
    assert lens[1] < 0.03
    _assert_finite_step(hparams["model"], front_end, wavs, lens)
