"""int8 ONNX: ONNX Runtime's static quantisation, calibrated on real training clips.

Measured on the recipes' students (the export note has the figures): dynamic quantisation
(``quantize_dynamic``) either leaves the convolutions in float (MatMul/Gemm/LSTM only: no gain
for the x-vector, CNN and ECAPA students, whose work is in their convolutions) or, with
``Conv``, runs them as ``ConvInteger`` with per-call activation scales, slower than fp32 (the CNN
tagger about 3x). Static QDQ quantisation, with activation ranges calibrated on training clips,
gives ONNX Runtime int8 ``Conv``/``MatMul``/``Gemm`` kernels. Only those ops are quantised (per
output channel for the weights, uint8 activations): the rest (masks, pooling statistics,
softmax) stays in float, and so does the front end: its DFT and Mel products see the raw
waveform and dB energies, which 8 bits cannot hold (the 80 dB range alone is 10^8).

ONNX Runtime 1.32 aborts the whole process (a C++ assertion) when it optimises some QDQ graphs:
measured on ECAPA, whose last 1x1 convolution (on the pooled statistics) cannot be quantised
together with the others. Each int8 file is therefore first opened in a child process; when that
fails, the quantisable nodes are left in float one at a time from the graph's end (at most
``MAX_FLOAT_TAIL``), and the nodes kept in float are returned for export.json.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)

from kd_modules.export.wrapper import INPUT_NAMES

QUANTISED_OPS = ["Conv", "MatMul", "Gemm"]
MAX_FLOAT_TAIL = 3
FRONT_END_SCOPE = "/front_end/"  # the ONNX node names of DeployedModel.front_end


class QuantisationError(RuntimeError):
    """The int8 model could not be made or does not load in ONNX Runtime."""


class ClipReader(CalibrationDataReader):
    """Feeds calibration clips ``(S,)`` one at a time (batch 1, no padding)."""

    def __init__(self, clips: Sequence[torch.Tensor]) -> None:
        self.feeds: Iterator[dict] = iter(
            dict(zip(INPUT_NAMES, (clip[None].numpy(), np.array([clip.numel()], np.int64))))
            for clip in clips
        )

    def get_next(self) -> dict | None:
        return next(self.feeds, None)


def front_end_nodes(model_path: Path) -> list[str]:
    """Names of the front end's nodes in the ONNX graph at ``model_path``."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    return [node.name for node in graph.node if node.name.startswith(FRONT_END_SCOPE)]


def quantisable_nodes(model_path: Path) -> list[str]:
    """Names, in graph order, of the nodes outside the front end that :func:`quantise` turns
    int8."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    return [
        node.name
        for node in graph.node
        if node.op_type in QUANTISED_OPS and not node.name.startswith(FRONT_END_SCOPE)
    ]


def check_loads(path: Path) -> None:
    """Open ``path`` in ONNX Runtime in a child process (with every graph optimisation on, as a
    user would): a graph that ONNX Runtime aborts on then fails here with a message instead of
    ending the caller's process."""
    code = (
        "import sys, onnxruntime; "
        "onnxruntime.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])"
    )
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no message"])[-1][:300]
        raise QuantisationError(
            f"ONNX Runtime cannot load the int8 model {path} (exit {done.returncode}): {tail}"
        )


def quantise_static(
    model_path: Path, out_path: Path, calibration: Sequence[torch.Tensor], in_float: list[str]
) -> None:
    """One static QDQ quantisation of ``model_path`` to ``out_path`` leaving ``in_float`` (and
    the front end) in float."""
    quantize_static(
        str(model_path),
        str(out_path),
        ClipReader(calibration),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=QUANTISED_OPS,
        nodes_to_exclude=front_end_nodes(model_path) + in_float,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )


def quantise(model_path: Path, out_path: Path, calibration: Sequence[torch.Tensor]) -> list[str]:
    """Write the static int8 QDQ version of the fp32 ONNX model ``model_path`` to ``out_path``,
    its activation ranges calibrated (min-max) on ``calibration`` clips ``(S,)``, checked to load
    in ONNX Runtime; returns the quantisable nodes left in float (see the module doc)."""
    if not calibration:
        raise ValueError("int8 quantisation needs calibration clips (real training clips)")
    nodes = quantisable_nodes(model_path)
    error = None
    for tail in range(min(MAX_FLOAT_TAIL, len(nodes)) + 1):
        in_float = nodes[len(nodes) - tail :]
        quantise_static(model_path, out_path, calibration, in_float)
        try:
            check_loads(out_path)
            return in_float
        except QuantisationError as err:
            error = err
    out_path.unlink(missing_ok=True)
    raise error
