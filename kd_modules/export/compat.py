"""Tracing-safe stand-ins for two SpeechBrain idioms that break export, with the same outputs.

- ``Xvector.forward`` calls each block as ``layer(x, lengths=lens)`` and falls back to
  ``layer(x)`` on ``TypeError``: ``torch.export`` leaves its module stack unbalanced when a call
  raises, and stops. :class:`TraceableXvector` asks each block's signature instead.
- ``length_to_mask`` expands to ``len(length)`` rows, a Python int that ``torch.jit.trace`` (and
  so the TorchScript-based ONNX exporter) freezes to the example's batch size.
  :func:`traceable_masks` swaps in :func:`length_to_mask`, which broadcasts instead, wherever
  SpeechBrain's function was imported (ECAPA's blocks, the taggers, the length-aware convs).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from speechbrain.dataio import dataio
from speechbrain.lobes.models.Xvector import Xvector
from torch import nn

_SPEECHBRAIN_LENGTH_TO_MASK = dataio.length_to_mask


def takes_lengths(layer: nn.Module) -> bool:
    """Whether ``layer.forward`` has a ``lengths`` parameter."""
    return "lengths" in inspect.signature(layer.forward).parameters


class TraceableXvector(Xvector):
    """SpeechBrain's ``Xvector`` whose blocks get ``lengths`` when their signature takes it."""

    def forward(self, x: torch.Tensor, lens: torch.Tensor | None = None) -> torch.Tensor:
        """Features ``(B, T, F)`` -> x-vectors ``(B, 1, E)``, as ``Xvector.forward``."""
        for layer in self.blocks:
            x = layer(x, lengths=lens) if takes_lengths(layer) else layer(x)
        return x


def use_traceable_xvectors(model: nn.Module) -> nn.Module:
    """Turn, in place, every SpeechBrain ``Xvector`` in ``model`` into a :class:`TraceableXvector`
    (same object and parameters); return ``model``."""
    for module in model.modules():
        if type(module) is Xvector:
            module.__class__ = TraceableXvector
    return model


def length_to_mask(
    length: torch.Tensor,
    max_len: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """SpeechBrain's ``length_to_mask`` ``(B,) -> (B, max_len)``, by broadcasting (no ``len``)."""
    if max_len is None:
        max_len = length.max().long().item()
    mask = torch.arange(max_len, device=length.device, dtype=length.dtype)[None] < length[:, None]
    return mask.to(dtype=length.dtype if dtype is None else dtype, device=device or length.device)


@contextmanager
def traceable_masks() -> Iterator[None]:
    """Within the block, every loaded module that imported SpeechBrain's ``length_to_mask``
    (and SpeechBrain's own ``dataio``) uses :func:`length_to_mask`."""
    swapped = [
        module
        for module in list(sys.modules.values())
        if vars(module).get("length_to_mask") is _SPEECHBRAIN_LENGTH_TO_MASK
    ]  # vars(): a getattr would import SpeechBrain's lazy modules
    for module in swapped:
        module.length_to_mask = length_to_mask
    try:
        yield
    finally:
        for module in swapped:
            module.length_to_mask = _SPEECHBRAIN_LENGTH_TO_MASK
