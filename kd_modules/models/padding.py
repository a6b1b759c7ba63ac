"""SpeechBrain 1-D convolutions that treat a padded batch as each clip alone.

SpeechBrain's ``Conv1d`` with ``padding="same"`` pads the whole batch (by reflection, by
default) at its end. A clip shorter than the batch then has its last valid frames convolved
with the batch's padding instead of with its own reflection, so its outputs depend on the batch
it is in: a teacher's outputs in a KD batch differ from the outputs a teacher cache stored for
the clip alone (a TDNN with dilations 2 and 3 changes up to 10 frames at each clip's end).
:class:`LengthAwareConv1d` fills each clip's tail as the convolution's own padding would fill it
for the clip alone, so every valid output frame is the clip's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from speechbrain.dataio.dataio import length_to_mask
from speechbrain.nnet.CNN import Conv1d
from torch import nn


def tail_source(counts: torch.Tensor, frames: int, mode: str) -> torch.Tensor:
    """Index ``(B, frames)`` of the frame each position copies: itself while valid, after a
    clip's ``counts`` ``(B,)`` valid frames its reflection (``reflect``) or its last frame
    (``replicate``). Positions far past the end clamp to frame 0; a same-padded convolution
    never reads them (its padding is shorter than the clip, or the clip alone could not be
    reflected either)."""
    time = torch.arange(frames, device=counts.device).unsqueeze(0)
    last = (counts - 1).unsqueeze(1)
    outside = (2 * last - time).clamp(min=0) if mode == "reflect" else last
    return torch.where(time <= last, time, outside)


class LengthAwareConv1d(Conv1d):
    """SpeechBrain ``Conv1d`` whose ``forward`` takes relative ``lengths`` ``(B,)``.

    Same parameters, names and outputs as ``Conv1d`` on a batch without padding (so checkpoints
    and teacher fingerprints are unchanged); with ``lengths``, the frames after each clip's
    ``round(length * T)`` valid ones are replaced, before convolving, by the clip's own
    reflection (``padding_mode="reflect"``), its last frame (``"replicate"``) or zeros
    (``"zeros"``/``"constant"``), as ``padding="same"`` pads the clip alone. SpeechBrain's
    ``Xvector`` passes ``lengths`` to every block that accepts it; encoders whose blocks call
    their convolutions without them (``ECAPA_TDNN``) get them through :func:`batch_lengths`.
    """

    batch_lengths: torch.Tensor | None = None  # set by batch_lengths() for one forward

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, T, C)`` (``(B, C, T)`` with ``skip_transpose``) -> the convolution's output."""
        lengths = self.batch_lengths if lengths is None else lengths
        if lengths is None or self.padding != "same" or self.kernel_size == 1:
            return super().forward(x)
        time_dim = 2 if self.skip_transpose else 1
        frames = x.shape[time_dim]
        reach = self.dilation * (self.kernel_size - 1) // 2 if self.stride == 1 else 0
        if self.padding_mode in ("reflect", "replicate") and reach:
            # A clip less than `reach` frames shorter than the batch reads past the batch's end,
            # where the convolution's own padding reflects the batch, not the clip: give the
            # tail room for the clip's own reflection, then drop the extra outputs.
            extended = F.pad(x, (0, reach) if self.skip_transpose else (0, 0, 0, reach))
            out = super().forward(self.fill_tails(extended, lengths * (frames / (frames + reach))))
            return out.narrow(time_dim, 0, frames)
        return super().forward(self.fill_tails(x, lengths))

    def fill_tails(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``x`` with each clip's padded frames refilled from its valid ones."""
        time_dim = 2 if self.skip_transpose else 1
        frames = x.shape[time_dim]
        counts = torch.round(lengths.float() * frames).clamp(1, frames).long().to(x.device)
        if self.padding_mode in ("zeros", "constant"):
            valid = length_to_mask(counts, frames, dtype=x.dtype)  # (B, T)
            return x * (valid.unsqueeze(1) if self.skip_transpose else valid.unsqueeze(2))
        if self.padding_mode not in ("reflect", "replicate"):
            raise ValueError(f"LengthAwareConv1d: no per-clip padding for {self.padding_mode!r}")
        source = tail_source(counts, frames, self.padding_mode)  # (B, T)
        if self.skip_transpose:
            return x.gather(2, source.unsqueeze(1).expand(-1, x.shape[1], -1))
        return x.gather(1, source.unsqueeze(2).expand(-1, -1, x.shape[2]))


@contextmanager
def batch_lengths(convs: list[LengthAwareConv1d], lengths: torch.Tensor | None) -> Iterator[None]:
    """Give ``convs`` the batch's relative ``lengths`` ``(B,)`` for the forward pass inside the
    block, for encoders whose blocks call their convolutions without them."""
    for conv in convs:
        conv.batch_lengths = lengths
    try:
        yield
    finally:
        for conv in convs:
            conv.batch_lengths = None


_LENGTH_AWARE: dict[type, type] = {Conv1d: LengthAwareConv1d}


def length_aware_class(cls: type) -> type:
    """The length-aware version of a SpeechBrain ``Conv1d`` class or subclass (ECAPA's own
    ``Conv1d`` only changes a default): ``LengthAwareConv1d`` first in its method order."""
    if cls not in _LENGTH_AWARE:
        _LENGTH_AWARE[cls] = type(f"LengthAware{cls.__name__}", (LengthAwareConv1d, cls), {})
    return _LENGTH_AWARE[cls]


def use_length_aware_convs(module: nn.Module) -> nn.Module:
    """Turn, in place, every SpeechBrain ``Conv1d`` (or subclass) inside ``module`` length-aware
    (same object, same parameters); return ``module``."""
    for child in module.modules():
        if isinstance(child, Conv1d) and not isinstance(child, LengthAwareConv1d):
            child.__class__ = length_aware_class(type(child))
    return module
