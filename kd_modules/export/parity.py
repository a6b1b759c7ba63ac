"""Parity of exported files with the PyTorch model, on real clips, batched and one at a time.

The reference is the recipe's own pipeline: SpeechBrain's front end (``kd_modules.replay
.FrontEnd``) and the model (noise-free, :func:`~kd_modules.export.wrapper.deployable_copy`) on
each clip alone, as stage 7 evaluates. Every runner (TorchScript, ONNX Runtime) then runs all the
clips zero-padded in one batch and each clip alone; the largest absolute difference of each from
the reference must stay within the tolerance (1e-4 in fp32), or :class:`ParityError` is raised,
so an export whose outputs differ is never written as finished.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from kd_modules.export.formats import example_batch
from kd_modules.export.wrapper import deployable_copy, task_output

Runner = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (wavs (B, S), lengths (B,)) -> (B, K)
TOLERANCE = 1e-4
MIN_LENGTHS = 3


class ParityError(RuntimeError):
    """An exported model's outputs differ from the PyTorch model's by more than the tolerance."""


@torch.no_grad()
def reference_outputs(
    front_end: nn.Module, model: nn.Module, task: str, clips: Sequence[torch.Tensor]
) -> np.ndarray:
    """``(N, K)``: the PyTorch model's outputs on each clip alone (recipe front end, no noise)."""
    model = deployable_copy(model)
    rows = []
    for clip in clips:
        feats, frame_lens = front_end.features_and_lengths(clip[None], torch.ones(1))
        rows.append(task_output(task, model(feats, frame_lens))[0].float().numpy())
    return np.stack(rows)


def check_clips(clips: Sequence[torch.Tensor]) -> None:
    """Parity needs clips of at least :data:`MIN_LENGTHS` different lengths (padding shows only
    when a batch mixes lengths)."""
    lengths = sorted({int(clip.numel()) for clip in clips})
    if len(lengths) < MIN_LENGTHS:
        raise ValueError(
            f"parity needs clips of >= {MIN_LENGTHS} different lengths, not {lengths} samples"
        )


def max_differences(
    runner: Runner, clips: Sequence[torch.Tensor], reference: np.ndarray
) -> dict[str, float]:
    """``{"batched": ..., "alone": ...}``: the largest absolute difference of ``runner``'s
    outputs from ``reference`` with all clips in one padded batch, and with each clip alone."""
    wavs, lengths = example_batch(list(clips))
    batched = runner(wavs.numpy(), lengths.numpy())
    alone = np.concatenate(
        [runner(clip[None].numpy(), np.array([clip.numel()], dtype=np.int64)) for clip in clips]
    )
    return {
        "batched": float(np.abs(batched - reference).max()),
        "alone": float(np.abs(alone - reference).max()),
    }


def check_parity(
    runners: dict[str, Runner],
    clips: Sequence[torch.Tensor],
    reference: np.ndarray,
    tolerance: float = TOLERANCE,
) -> dict[str, dict[str, float]]:
    """Each runner's :func:`max_differences`; raises :class:`ParityError` naming every runner
    and way (batched, alone) off by more than ``tolerance``."""
    check_clips(clips)
    report = {name: max_differences(runner, clips, reference) for name, runner in runners.items()}
    failed = [
        f"{name} {way} {error:.2e}"
        for name, errors in report.items()
        for way, error in errors.items()
        if not error <= tolerance  # NaN fails too
    ]
    if failed:
        lengths = sorted({int(clip.numel()) for clip in clips})
        raise ParityError(
            f"exported outputs differ from the PyTorch model by more than {tolerance:g} "
            f"(max abs, clips of {lengths} samples): {', '.join(failed)}"
        )
    return report
