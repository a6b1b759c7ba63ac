"""Statistics pooling that stays finite on very short inputs.

SpeechBrain's ``StatisticsPooling`` (used by its Xvector lobe) keeps ``round(len * T)`` frames of
each utterance, then takes their mean and Bessel-corrected ``torch.std``. A clip with one valid
frame (n - 1 = 0) gives NaN, and one with none (a 0.01 s clip padded in a batch of 5 s clips:
0.002 * 501 frames rounds to 0 or 1) gives NaN too; so does the gradient of ``torch.std`` when
every frame is equal. One such clip makes a whole batch's loss NaN.
"""

from __future__ import annotations

import torch
from speechbrain.nnet.pooling import StatisticsPooling
from torch import nn


class FiniteStatisticsPooling(StatisticsPooling):
    """SpeechBrain's statistics pooling, finite for every length.

    Each utterance keeps at least one frame, the std of a single frame is 0, and the variance is
    floored at eps² before the square root so that its gradient stays finite. Otherwise the output
    equals SpeechBrain's: the same frames, the Bessel-corrected std + eps, the same Gaussian noise
    on the mean (drawn the same way, so seeded runs are unchanged). It has no parameters, so
    checkpoints and teacher fingerprints are the same with either class. Statistics are computed
    in float32 (sums of squares over hundreds of frames overflow float16), returned in x's dtype.
    """

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Frames ``(B, T, C)`` and relative lengths ``(B,)`` -> ``(B, 1, 2C)``: [mean, std].

        With only one of ``return_mean`` / ``return_std``, the output is ``(B, 1, C)``.
        """
        dtype, x = x.dtype, x.float()
        batch, frames = x.shape[:2]
        if lengths is None:
            counts = torch.full((batch,), float(frames), device=x.device)
        else:
            counts = torch.round(lengths.float() * frames).clamp(1, frames)
        valid = (torch.arange(frames, device=x.device) < counts[:, None]).unsqueeze(-1)
        n = counts[:, None]
        mean = torch.where(valid, x, 0.0).sum(dim=1) / n
        stats = []
        if self.return_mean:
            stats.append(mean + self._get_gauss_noise(mean.size(), device=mean.device))
        if self.return_std:
            squares = torch.where(valid, x - mean[:, None], 0.0).square().sum(dim=1)
            variance = squares / (n - 1).clamp(min=1)
            stats.append(variance.clamp(min=self.eps**2).sqrt() + self.eps)
        return torch.cat(stats, dim=1).unsqueeze(1).to(dtype)


def use_finite_statistics_pooling(module: nn.Module) -> nn.Module:
    """Replace, in place, every SpeechBrain ``StatisticsPooling`` inside ``module``; return it."""
    for name, child in module.named_children():
        if type(child) is StatisticsPooling:
            setattr(module, name, FiniteStatisticsPooling(child.return_mean, child.return_std))
        else:
            use_finite_statistics_pooling(child)
    return module
