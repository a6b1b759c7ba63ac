"""Load and run the exported files: ONNX Runtime sessions (CPU) and TorchScript modules.

A runner is ``(wavs (B, S) float32, lengths (B,) int64) -> (B, K)`` on NumPy arrays, the same
for every format, so the parity check and the benchmark treat them alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import torch

from kd_modules.export.wrapper import INPUT_NAMES


def onnx_session(path: str | Path, threads: int = 0) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session of ``path`` with ``threads`` intra-op threads (0: all cores)
    and one inter-op thread."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_runner(session: onnxruntime.InferenceSession):
    """The runner of an ONNX Runtime session."""

    def run(wavs: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        feeds = dict(zip(INPUT_NAMES, (wavs.astype(np.float32), lengths.astype(np.int64))))
        return session.run(None, feeds)[0]

    return run


def torch_runner(module: torch.nn.Module):
    """The runner of a PyTorch or TorchScript module (eval mode, no gradients)."""

    @torch.no_grad()
    def run(wavs: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        wavs, lengths = torch.from_numpy(wavs).float(), torch.from_numpy(lengths).long()
        return module(wavs, lengths).float().numpy()

    return run


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    """The TorchScript file at ``path``, on the CPU, in eval mode."""
    return torch.jit.load(str(path), map_location="cpu").eval()
