"""The GE2E speaker encoder of Resemblyzer (``resemblyzer==0.1.4``), and its front end, in torch.

Resemblyzer's ``VoiceEncoder`` is a 3-layer LSTM (40 -> 256) over a 40-band mel power
spectrogram (not a log-mel: ``resemblyzer.audio.wav_to_mel_spectrogram``), whose last hidden
state goes through ``Linear(256, 256)`` and a ReLU and is L2-normalised (Wan et al., "Generalized
end-to-end loss for speaker verification", ICASSP 2018). ``embed_utterance`` cuts an utterance
into 1.6 s partials (160 frames) about 1.3 times a second, embeds each and L2-normalises their
mean. This module reproduces the network (same parameter names, so the package's
``pretrained.pt`` loads as it is), the partials and the mel front end, without importing the
package (it imports webrtcvad and librosa at import time).

Not reproduced: ``preprocess_wav``'s silence trimming (webrtcvad's voice activity detector, mode
3, 30 ms windows); its volume normalisation (to -30 dBFS, raising only) is
``GE2EFrontEnd(normalize_dbfs=-30)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

INT16_MAX = 2**15 - 1  # the package measures loudness on a 16-bit scale


class GE2EFrontEnd(nn.Module):
    """Waveforms ``(B, N)`` -> the package's mel power spectrogram ``(B, T, n_mels)``.

    As librosa's ``melspectrogram`` with the package's ``hparams.py``: 25 ms Hann window
    (``n_fft`` = window), 10 ms hop, centred frames with zero padding, power 2, Slaney mel scale
    and Slaney area normalisation, 0 Hz to Nyquist. ``T = 1 + N // hop``.

    Arguments
    ---------
    sample_rate : int
        Hz; the package's ``sampling_rate`` (16000).
    n_mels : int
        Mel bands (``mel_n_channels``: 40).
    window_ms, hop_ms : float
        Window and hop (``mel_window_length``: 25, ``mel_window_step``: 10).
    normalize_dbfs : float or None
        Raise each utterance's RMS level to this many dBFS (never lower it), as the package's
        ``normalize_volume(wav, -30, increase_only=True)``; None leaves the level alone.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mels: int = 40,
        window_ms: float = 25.0,
        hop_ms: float = 10.0,
        normalize_dbfs: float | None = -30.0,
    ) -> None:
        super().__init__()
        n_fft = int(sample_rate * window_ms / 1000)
        self.hop = int(sample_rate * hop_ms / 1000)
        self.normalize_dbfs = normalize_dbfs
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=n_fft,
            hop_length=self.hop,
            n_mels=n_mels,
            center=True,
            pad_mode="constant",
            power=2.0,
            norm="slaney",
            mel_scale="slaney",
        )

    def settings(self) -> dict:
        """What decides this front end's output (for a teacher cache's key)."""
        mel = self.mel
        return {
            "front_end": "ge2e_mel_power",
            "sample_rate": mel.sample_rate,
            "n_fft": mel.n_fft,
            "hop_length": self.hop,
            "n_mels": mel.n_mels,
            "normalize_dbfs": self.normalize_dbfs,
        }

    def gain(self, wav: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """``(B, 1)`` factors raising each utterance's RMS over its ``lens`` (relative) samples to
        ``normalize_dbfs`` (1 where it is louder already, or silent)."""
        n = wav.shape[1]
        valid = torch.arange(n, device=wav.device)[None] < torch.round(lens * n)[:, None]
        power = ((wav.double() * INT16_MAX) ** 2 * valid).sum(1) / valid.sum(1).clamp(min=1)
        dbfs = 20 * torch.log10(power.sqrt() / INT16_MAX)
        change = (self.normalize_dbfs - dbfs).clamp(min=0).nan_to_num(0.0, posinf=0.0)
        return (10 ** (change / 20)).to(wav.dtype)[:, None]

    def frame_lens(self, lens: torch.Tensor, n_samples: int) -> torch.Tensor:
        """Relative lengths in samples ``(B,)`` -> relative lengths in frames ``(B,)``, exact:
        an utterance of ``s`` samples has ``1 + s // hop`` frames of the ``1 + n_samples // hop``
        (``round(lens * T)`` of the padded batch can be one frame off)."""
        samples = torch.round(lens * n_samples).long()
        return (1 + samples // self.hop).to(lens.dtype) / (1 + n_samples // self.hop)

    def forward(self, wav: torch.Tensor, lens: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, N)`` waveforms (``lens`` ``(B,)`` relative lengths) -> ``(B, T, n_mels)``."""
        if lens is None:
            lens = torch.ones(wav.shape[0], device=wav.device)
        if self.normalize_dbfs is not None:
            wav = wav * self.gain(wav, lens)
        return self.mel(wav.float()).transpose(1, 2)


class GE2E(nn.Module):
    """Resemblyzer's voice encoder: ``{"embedding": (B, E), "frames": (B, T, H)}``.

    ``frames`` is the last LSTM layer's output over each whole (padded) utterance, computed
    through the ``frames`` identity module so taps can address it (KD feature terms);
    unidirectional, so a frame never sees the padding after it. ``embedding`` is, with
    ``partial_frames`` set, the package's ``embed_utterance``: windows of ``partial_frames``
    frames every ``round(frames_per_s / partial_rate)`` frames over each utterance's valid
    frames, zero-padded at the end, the last one kept when it covers at least ``min_coverage``
    of a window (or is the only one); each window's L2-normed ReLU embedding, averaged and
    L2-normed. With ``partial_frames`` None it is the embedding of the whole utterance at once.
    Frames past an utterance's length are zeroed before windowing, so its embedding does not
    depend on the batch it is in. The package decides the last window's coverage on samples;
    here it is on frames (``(T - 1) / partial_frames``, up to one hop less).

    Arguments
    ---------
    n_mels, hidden_size, embedding_dim, num_layers : int
        40, 256, 256, 3 in the package's ``hparams.py``.
    partial_frames : int or None
        ``partials_n_frames`` (160 = 1.6 s), or None for whole utterances.
    partial_rate : float
        Partials per second (``embed_utterance``'s ``rate``: 1.3).
    min_coverage : float
        ``embed_utterance``'s ``min_coverage`` (0.75).
    frames_per_s : float
        Frame rate of the features (100: a 10 ms hop).
    """

    def __init__(
        self,
        n_mels: int = 40,
        hidden_size: int = 256,
        embedding_dim: int = 256,
        num_layers: int = 3,
        partial_frames: int | None = 160,
        partial_rate: float = 1.3,
        min_coverage: float = 0.75,
        frames_per_s: float = 100.0,
    ) -> None:
        super().__init__()
        self.lstm = nn.LSTM(n_mels, hidden_size, num_layers, batch_first=True)
        self.linear = nn.Linear(hidden_size, embedding_dim)
        self.relu = nn.ReLU()
        self.frames = nn.Identity()
        self.partial_frames = partial_frames
        self.frame_step = round(frames_per_s / partial_rate)
        self.min_coverage = min_coverage
        if partial_frames is not None and not 0 < self.frame_step <= partial_frames:
            raise ValueError(
                f"partial_rate {partial_rate} gives a step of {self.frame_step} frames: it must "
                f"be in 1..partial_frames ({partial_frames})"
            )

    def embed(self, mels: torch.Tensor) -> torch.Tensor:
        """``(N, t, F)`` -> ``(N, E)``: the last hidden state, linear, ReLU, L2 norm."""
        _, (hidden, _) = self.lstm(mels)
        return F.normalize(self.relu(self.linear(hidden[-1])), dim=1)

    def window_starts(self, n_frames: int) -> list[int]:
        """First frames of the partials of an utterance of ``n_frames`` valid frames."""
        size = self.partial_frames
        starts = list(range(0, max(1, n_frames - size + self.frame_step + 1), self.frame_step))
        coverage = (n_frames - 1 - starts[-1]) / size
        if coverage < self.min_coverage and len(starts) > 1:
            starts.pop()
        return starts

    def partial_embedding(self, feats: torch.Tensor, n_frames: list[int]) -> torch.Tensor:
        """``(B, T, F)`` features, valid lengths -> ``(B, E)``: the partials' normed mean."""
        starts = [self.window_starts(n) for n in n_frames]
        stop = max(s[-1] for s in starts) + self.partial_frames
        padded = F.pad(feats, (0, 0, 0, max(0, stop - feats.shape[1])))
        windows = torch.stack(
            [padded[b, s : s + self.partial_frames] for b, row in enumerate(starts) for s in row]
        )
        rows = torch.tensor([b for b, row in enumerate(starts) for _ in row], device=feats.device)
        partial = self.embed(windows)
        total = torch.zeros(feats.shape[0], partial.shape[1], device=feats.device)
        return F.normalize(total.index_add(0, rows, partial.to(total.dtype)), dim=1)

    def forward(self, feats: torch.Tensor, lens: torch.Tensor | None = None) -> dict:
        """``(B, T, F)`` mel power features, ``lens`` ``(B,)`` relative -> named outputs."""
        steps = feats.shape[1]
        if lens is None:
            lens = torch.ones(feats.shape[0], device=feats.device)
        n_frames = [max(1, min(steps, math.floor(float(x) * steps + 0.5))) for x in lens]
        valid = (
            torch.arange(steps, device=feats.device)[None]
            < torch.tensor(n_frames, device=feats.device)[:, None]
        )
        feats = feats * valid[..., None]
        frames = self.frames(self.lstm(feats)[0])
        if self.partial_frames is None:
            last = frames[torch.arange(feats.shape[0]), torch.tensor(n_frames) - 1]
            embedding = F.normalize(self.relu(self.linear(last)), dim=1)
        else:
            embedding = self.partial_embedding(feats, n_frames)
        return {"embedding": embedding, "frames": frames}


class GE2EOnWaveforms(nn.Module):
    """The front end and the encoder as one model on 16 kHz waveforms ``(B, S)`` with relative
    lengths ``(B,)``: the :class:`GE2E` outputs; taps address ``encoder.<path>``."""

    def __init__(self, front_end: GE2EFrontEnd, encoder: GE2E) -> None:
        super().__init__()
        self.front_end, self.encoder = front_end, encoder

    def forward(self, wavs: torch.Tensor, lens: torch.Tensor | None = None) -> dict:
        if lens is None:
            lens = torch.ones(wavs.shape[0], device=wavs.device)
        feats = self.front_end(wavs, lens)
        return self.encoder(feats, self.front_end.frame_lens(lens, wavs.shape[1]))
