"""The GE2E encoder and its front end against the resemblyzer package itself, on real speech.

The package (setup.py's dev extra installs it, with webrtcvad and librosa) is the reference:
its ``wav_to_mel_spectrogram`` for the mel, ``VoiceEncoder().embed_utterance`` for the
embedding, on the same ``preprocess_wav`` output; our code never imports it.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import torch

from kd_modules.dataio import read_audio
from kd_modules.hub import resemblyzer as hub_resemblyzer
from kd_modules.models.ge2e import GE2E, GE2EFrontEnd, GE2EOnWaveforms

with warnings.catch_warnings():  # webrtcvad imports the deprecated pkg_resources
    warnings.simplefilter("ignore")
    package = pytest.importorskip("resemblyzer", reason="pip install -e '.[dev]' installs it")
from resemblyzer.audio import normalize_volume, wav_to_mel_spectrogram  # noqa: E402

TEACHER_YAML = "recipes/speaker_verification/hparams/teacher/ge2e_resemblyzer.yaml"


@pytest.fixture(scope="module")
def clips(shared_data) -> list[np.ndarray]:
    """Three LibriSpeech test-other utterances (2.8-12 s) and two VCTK ones, 16 kHz."""
    libri = sorted((shared_data / "librispeech_subset/LibriSpeech/test-other").glob("*/*/*.flac"))
    vctk = sorted((shared_data / "vctk_subset/wavs").glob("*/*.*"))
    files = libri[:3] + vctk[:2]
    assert len(files) == 5
    return [read_audio(f, 16000).numpy() for f in files]


@pytest.fixture(scope="module")
def preprocessed(clips) -> list[np.ndarray]:
    """The package's ``preprocess_wav`` of each clip (volume to -30 dBFS, webrtcvad trimming)."""
    return [package.preprocess_wav(wav) for wav in clips]


@pytest.fixture(scope="module")
def encoder() -> GE2E:
    return hub_resemblyzer.load_ge2e(hub_resemblyzer.pretrained_file()).eval()


def test_mel_matches_the_package(preprocessed):
    front_end = GE2EFrontEnd(normalize_dbfs=None)
    for wav in preprocessed:
        ours = front_end(torch.from_numpy(wav)[None])[0]
        reference = torch.from_numpy(wav_to_mel_spectrogram(wav))
        assert ours.shape == reference.shape
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)


def test_volume_normalisation_matches_the_package(clips):
    front_end = GE2EFrontEnd(normalize_dbfs=-30.0)
    for wav in clips:
        quiet = (wav * 0.05).astype(np.float32)  # below -30 dBFS: raised
        for signal in (quiet, wav):
            ours = front_end(torch.from_numpy(signal)[None])[0]
            reference = wav_to_mel_spectrogram(normalize_volume(signal, -30, increase_only=True))
            torch.testing.assert_close(
                ours, torch.from_numpy(reference), rtol=1e-4, atol=1e-4 * float(reference.max())
            )


def test_embedding_matches_voice_encoder(preprocessed, encoder):
    voice_encoder = package.VoiceEncoder(device="cpu", verbose=False)
    front_end = GE2EFrontEnd(normalize_dbfs=None)
    for wav in preprocessed:
        with torch.no_grad():
            ours = encoder(front_end(torch.from_numpy(wav)[None]))["embedding"][0]
        reference = torch.from_numpy(voice_encoder.embed_utterance(wav))
        assert float(ours @ reference) >= 0.999


def test_embedding_of_a_padded_batch_is_that_of_each_utterance(clips, encoder):
    model = GE2EOnWaveforms(GE2EFrontEnd(), encoder)
    wavs = [torch.from_numpy(w[:48000]) for w in clips[:3]] + [torch.from_numpy(clips[3])]
    longest = max(len(w) for w in wavs)
    batch = torch.stack([torch.nn.functional.pad(w, (0, longest - len(w))) for w in wavs])
    lens = torch.tensor([len(w) / longest for w in wavs])
    with torch.no_grad():
        out = model(batch, lens)
        for row, wav in enumerate(wavs):
            alone = model(wav[None])
            torch.testing.assert_close(
                out["embedding"][row], alone["embedding"][0], atol=1e-5, rtol=0
            )
            frames = alone["frames"].shape[1]
            torch.testing.assert_close(
                out["frames"][row, :frames], alone["frames"][0], atol=1e-5, rtol=0
            )


def test_whole_utterance_embedding_differs_from_partials(preprocessed, encoder):
    whole = hub_resemblyzer.load_ge2e(hub_resemblyzer.pretrained_file(), partial_frames=None)
    feats = GE2EFrontEnd(normalize_dbfs=None)(torch.from_numpy(preprocessed[0])[None])
    with torch.no_grad():
        a, b = encoder(feats)["embedding"][0], whole(feats)["embedding"][0]
        _, (hidden, _) = whole.lstm(feats)
        direct = torch.nn.functional.normalize(whole.relu(whole.linear(hidden[-1])), dim=1)[0]
    torch.testing.assert_close(b, direct, atol=1e-5, rtol=0)
    assert float(a @ b) < 0.999  # the partials pool otherwise than one pass over 11 s


def test_teacher_on_waveforms_without_importing_the_package(clips, monkeypatch):
    for name in [m for m in sys.modules if m == "resemblyzer" or m.startswith("resemblyzer.")]:
        monkeypatch.delitem(sys.modules, name)
    teacher = hub_resemblyzer.load_resemblyzer_teacher(
        {"teacher_taps": {"t_frames": "@frames"}, "teacher_source_yaml": TEACHER_YAML}
    )
    assert not [m for m in sys.modules if m.startswith("resemblyzer")]  # nor its imports
    wav = torch.from_numpy(clips[0])[None]
    out = teacher(wav, torch.ones(1))
    alone = GE2EFrontEnd()(wav)
    with torch.no_grad():
        reference = teacher.model.encoder(alone)
    torch.testing.assert_close(out["embedding"], reference["embedding"])
    assert out["t_frames"].shape == (1, alone.shape[1], 256)
    assert not out["embedding"].requires_grad and teacher.own_front_end
    assert teacher.record()["files"]["pretrained.pt"] == hub_resemblyzer.sha256(
        hub_resemblyzer.pretrained_file()
    )


def test_fingerprint_covers_the_front_end():
    default = hub_resemblyzer.load_resemblyzer_teacher({})
    louder = hub_resemblyzer.load_resemblyzer_teacher({"ge2e_normalize_dbfs": -20.0})
    whole = hub_resemblyzer.load_resemblyzer_teacher({"ge2e_partial_frames": None})
    assert len({default.fingerprint, louder.fingerprint, whole.fingerprint}) == 3
    assert default.fingerprint == hub_resemblyzer.load_resemblyzer_teacher({}).fingerprint


def test_missing_package_is_one_line(monkeypatch):
    monkeypatch.setattr(hub_resemblyzer.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(hub_resemblyzer.ResemblyzerMissing, match=r"pip install 'resemblyzer"):
        hub_resemblyzer.load_resemblyzer_teacher({})


def test_registered_as_teacher_source(tmp_path):
    from kd_modules.hub.sources import load_source_teacher

    hparams = {"teacher_source": "resemblyzer", "exp_root": str(tmp_path), "teacher_taps": {}}
    teacher = load_source_teacher(hparams)
    assert isinstance(teacher, hub_resemblyzer.ResemblyzerTeacher)
    assert teacher.fingerprint == hub_resemblyzer.load_resemblyzer_teacher({}).fingerprint
