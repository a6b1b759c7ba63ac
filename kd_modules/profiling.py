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


@torch.no_grad()
def count_macs(model: nn.Module, *inputs: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on ``inputs`` (PyTorch's FLOP counter / 2)."""
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(*inputs)
    model.train(was_training)
    return int(counter.get_total_flops() // 2)


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
