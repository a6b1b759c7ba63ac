"""Write a :class:`~kd_modules.export.wrapper.DeployedModel` as TorchScript and as ONNX.

Both are traced (``torch.jit.trace``; the ONNX file through the TorchScript-based
``torch.onnx.export(..., dynamo=False)``) on an example batch of two clips of different lengths,
with batch and length dynamic. Measured choices (the export note has the figures):

- The dynamo exporter (``dynamo=True``) fails on two of the recipes' architectures however the
  shapes are declared: ``torch.export`` unrolls the CRNN student's LSTM over the example's frames
  (a guard ``frames == 19``) and specialises the CNN taggers' average pooling on the parity of the
  frame count, and an x-vector exported by it takes about 30 s against 1 s. The TorchScript-based
  exporter maps the LSTM to ONNX ``LSTM`` and keeps every shape symbolic.
- Opset 17, the lowest with every op used here; the ONNX front end uses DFT weights in a ``Conv``
  (the ``STFT`` op, which only the dynamo exporter emits, ran about 10x slower in ONNX Runtime and
  0.18 dB off SpeechBrain's features), the TorchScript file ``torch.stft`` (SpeechBrain's FFT).
- Tracing records shapes only through tensor ops: SpeechBrain's ``length_to_mask`` is swapped for
  a broadcasting one while tracing (:func:`~kd_modules.export.compat.traceable_masks`); the parity
  check (:mod:`kd_modules.export.parity`) runs every file on other lengths and batch sizes.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from kd_modules.export.compat import traceable_masks
from kd_modules.export.wrapper import INPUT_NAMES

OPSET = 17


def example_batch(clips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(wavs (B, S), lengths (B,))``: the clips zero-padded at the end to the longest."""
    longest = max(int(clip.numel()) for clip in clips)
    wavs = torch.zeros(len(clips), longest)
    for row, clip in enumerate(clips):
        wavs[row, : clip.numel()] = clip
    return wavs, torch.tensor([int(clip.numel()) for clip in clips], dtype=torch.long)


def check_example(example: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Refuse an example batch that could freeze a shape: it needs two clips or more, of
    different lengths (with one clip a tracer may fix the batch, with equal ones the padding)."""
    lengths = example[1]
    if lengths.numel() < 2 or lengths.unique().numel() < 2:
        raise ValueError(
            f"export needs an example batch of >= 2 clips of different lengths, "
            f"not lengths {lengths.tolist()}"
        )


def trace(model: nn.Module, example: tuple[torch.Tensor, torch.Tensor]) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` of ``model`` on ``example`` with tracing-safe masks, warnings quiet
    (the tracer warns about every Python int it sees; the parity check judges the result)."""
    check_example(example)
    with traceable_masks(), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.jit.trace(model.eval(), example, check_trace=False)


def export_torchscript(
    model: nn.Module, path: str | Path, example: tuple[torch.Tensor, torch.Tensor]
) -> Path:
    """Trace ``model`` on ``example`` and save it to ``path`` (``torch.jit.load`` reads it)."""
    path = Path(path)
    trace(model, example).save(str(path))
    return path


def export_onnx(
    model: nn.Module,
    path: str | Path,
    example: tuple[torch.Tensor, torch.Tensor],
    output_name: str,
    opset: int = OPSET,
) -> Path:
    """Export ``model`` to ONNX at ``path``: inputs ``wavs (batch, samples)`` float32 and
    ``lengths (batch,)`` int64, output ``output_name (batch, K)``, batch and samples dynamic."""
    check_example(example)
    path = Path(path)
    axes = {"wavs": {0: "batch", 1: "samples"}, "lengths": {0: "batch"}, output_name: {0: "batch"}}
    with traceable_masks(), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            example,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=list(INPUT_NAMES),
            output_names=[output_name],
            dynamic_axes=axes,
        )
    return path
