"""Model cost figures for results.json: parameters, multiply-accumulates and CPU latency."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not) of ``model``."""
    return sum(p.numel() for p in model.parameters())


def _recurrent_macs(module: nn.RNNBase, inputs: tuple, output) -> int:
    """Multiply-accumulates of an RNN/LSTM/GRU call, which PyTorch's FLOP counter misses (0):
    per step, layer and direction, gates × H × (input + H) for the input and hidden products."""
    x = inputs[0]
    steps = x.shape[1] if module.batch_first else x.shape[0]
    batch = x.shape[0] if module.batch_first else x.shape[1]
    gates = {"LSTM": 4, "GRU": 3}.get(module.mode, 1)
    directions = 2 if module.bidirectional else 1
    hidden, total = module.hidden_size, 0
    for layer in range(module.num_layers):
        size = module.input_size if layer == 0 else hidden * directions
        total += directions * gates * hidden * (size + hidden)
    return total * steps * batch


@torch.no_grad()
def count_macs(model: nn.Module, *inputs: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on ``inputs`` (PyTorch's FLOP counter / 2, plus
    the recurrent layers it does not count)."""
    was_training = model.training
    model.eval()
    recurrent = [0]

    def count(module, args, output):
        recurrent[0] += _recurrent_macs(module, args, output)

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.RNNBase)]
    try:
        with FlopCounterMode(display=False) as counter:
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return int(counter.get_total_flops() // 2) + recurrent[0]


@torch.no_grad()
def cpu_latency_ms(model: nn.Module, *inputs: torch.Tensor, repeats: int = 20) -> float:
    """Median wall time (ms) of one single-threaded CPU forward pass, after 3 warm-up passes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    was_training = model.training
    model.eval()
    try:
        for _ in range(3):
            model(*inputs)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(*inputs)
            times.append((time.perf_counter() - start) * 1000.0)
    finally:
        torch.set_num_threads(threads)
        model.train(was_training)
    return statistics.median(times)
