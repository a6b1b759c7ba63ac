"""The recipes' features as an exportable module: waveforms and sample counts in, features out.

A recipe's front end (:class:`kd_modules.replay.FrontEnd`: SpeechBrain's ``Fbank`` then
sentence-mean ``InputNormalization``) does not export: ``torch.stft`` has no ONNX form that the
TorchScript-based exporter takes, the dynamo exporter's ONNX ``STFT`` runs slowly and far off
SpeechBrain's features in ONNX Runtime, and ``Fbank`` takes the max for its 80 dB floor over the
padded batch. :class:`DeployableFrontEnd` computes the same features from the same settings and
weights (window, Mel matrix, floor), each clip from its own samples only:

- frames are ``S // hop + 1`` per clip of ``S`` samples (the STFT is centred on zero padding), as
  :meth:`kd_modules.replay.FrontEnd.frame_lengths` counts them, and the returned relative lengths
  are the same ``(n - 0.25) / T``, so a model downstream keeps exactly each clip's frames;
- the dB floor (``top_db`` below the clip's loudest bin) and the sentence mean use the clip's own
  frames, so padding never changes a clip's features (SpeechBrain's floor sees the padding too);
- the spectrum is computed either by ``torch.stft`` (``dft="stft"``: SpeechBrain's own FFT, for
  eager PyTorch and TorchScript) or by a strided convolution whose weights are the windowed DFT
  (``dft="conv"``: one ``Conv``, which every ONNX exporter and runtime take, and which ONNX
  Runtime runs as one large matrix product; a two-stage Cooley-Tukey version with a fifth of
  the multiply-adds ran slower there, its transposes costing more than the products saved).

Measured on real clips: with ``torch.stft`` the features equal SpeechBrain's to 1e-5; the DFT
convolution rounds differently from SpeechBrain's FFT, by up to about 1.5e-3 dB in the quietest
bins, which is also how far SpeechBrain's own float32 features are from exact (float64) ones.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

DFT_METHODS = ("conv", "stft")


class UnsupportedFrontEnd(ValueError):
    """A front-end setting the deployable front end does not reproduce; the message names it."""


def _require(condition: bool, setting: str) -> None:
    if not condition:
        raise UnsupportedFrontEnd(f"the deployable front end cannot reproduce {setting}")


def mel_matrix(fbanks: nn.Module) -> torch.Tensor:
    """SpeechBrain ``Filterbank``'s frozen Mel matrix ``(n_fft // 2 + 1, n_mels)``, built by its
    own code (so the filters are SpeechBrain's to the last bit)."""
    bins = fbanks.all_freqs_mat.shape[1]
    central = fbanks.f_central.repeat(bins, 1).transpose(0, 1)
    band = fbanks.band.repeat(bins, 1).transpose(0, 1)
    return fbanks._create_fbank_matrix(central, band).detach().float()


def dft_weights(window: torch.Tensor, n_fft: int) -> torch.Tensor:
    """Conv1d weights ``(2 (n_fft // 2 + 1), 1, n_fft)``: the real then the imaginary parts of the
    one-sided DFT of a frame times ``window`` (zero-padded to ``n_fft`` in its centre, as
    ``torch.stft`` pads it), computed in float64."""
    left = (n_fft - window.numel()) // 2
    padded = F.pad(window.double(), (left, n_fft - window.numel() - left))
    bins = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
    angle = 2 * math.pi * bins * torch.arange(n_fft, dtype=torch.float64)[None] / n_fft
    weights = torch.cat([torch.cos(angle) * padded, -torch.sin(angle) * padded])
    return weights.float().unsqueeze(1)


class DeployableFrontEnd(nn.Module):
    """``(wavs (B, S) float32, lengths (B,) samples) -> feats (B, T, F), frame_lens (B,)``.

    Arguments
    ---------
    front_end : kd_modules.replay.FrontEnd
        The recipe's front end (``features``: SpeechBrain ``Fbank``, ``normalize``:
        ``InputNormalization`` with sentence mean); its settings and weights are copied.
    dft : str
        ``"conv"`` (DFT weights in a strided convolution) or ``"stft"`` (``torch.stft``).
    """

    def __init__(self, front_end: nn.Module, dft: str = "conv") -> None:
        super().__init__()
        if dft not in DFT_METHODS:
            raise ValueError(f"dft must be one of {DFT_METHODS}, not {dft!r}")
        fbank, norm = front_end.features, front_end.normalize
        stft, fbanks = fbank.compute_STFT, fbank.compute_fbanks
        _require(not (fbank.deltas or fbank.context), "Fbank deltas or context windows")
        _require(stft.center and stft.pad_mode == "constant", "a non-centred or reflect STFT")
        _require(not stft.normalized_stft and stft.onesided, "a normalised or two-sided STFT")
        _require(fbanks.freeze and fbanks.log_mel, "trainable or linear Mel filters")
        _require(norm.norm_type == "sentence", f"InputNormalization norm_type={norm.norm_type!r}")
        _require(not norm.std_norm, "InputNormalization std_norm=True")
        self.dft, self.n_fft, self.hop = dft, stft.n_fft, stft.hop_length
        self.win_length = stft.win_length
        self.amin, self.top_db = fbanks.amin, fbanks.top_db
        self.db_scale, self.db_offset = fbanks.multiplier, fbanks.multiplier * fbanks.db_multiplier
        self.register_buffer("window", stft.window.detach().float().clone())
        self.register_buffer("mel", mel_matrix(fbanks))
        self.register_buffer("kernel", dft_weights(stft.window, stft.n_fft))

    def forward(
        self, wavs: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised log-Mel features ``(B, T, F)`` and relative frame lengths ``(B,)``."""
        counts = self.frame_counts(lengths)
        frames = torch.div(wavs.shape[1], self.hop, rounding_mode="floor") + 1
        valid = torch.arange(frames, device=wavs.device)[None, :, None] < counts[:, None, None]
        feats = self.log_mel(self.power(wavs), valid)
        mean = torch.where(valid, feats, 0.0).sum(1, keepdim=True) / counts[:, None, None]
        return feats - mean, (counts - 0.25) / frames

    def frame_counts(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames ``(B,)`` (float) of each clip of ``lengths`` samples: ``S // hop + 1``."""
        return torch.div(lengths.long(), self.hop, rounding_mode="floor").float() + 1

    def power(self, wavs: torch.Tensor) -> torch.Tensor:
        """Power spectrum ``(B, T, n_fft // 2 + 1)`` of the centred, zero-padded frames."""
        if self.dft == "stft":
            spec = torch.stft(
                wavs,
                self.n_fft,
                self.hop,
                self.win_length,
                self.window,
                center=True,
                pad_mode="constant",
                return_complex=True,
            )
            return torch.view_as_real(spec).square().sum(-1).transpose(1, 2)
        padded = F.pad(wavs.unsqueeze(1), (self.n_fft // 2, self.n_fft // 2))
        parts = F.conv1d(padded, self.kernel, stride=self.hop)  # (B, 2 K, T)
        real, imag = parts.chunk(2, dim=1)
        return (real.square() + imag.square()).transpose(1, 2)

    def log_mel(self, power: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """dB Mel energies ``(B, T, F)``, floored ``top_db`` below each clip's loudest valid bin."""
        db = self.db_scale * torch.log10((power @ self.mel).clamp(min=self.amin)) - self.db_offset
        loudest = torch.where(valid, db, -torch.inf).amax(dim=(1, 2), keepdim=True)
        return torch.maximum(db, loudest - self.top_db)
