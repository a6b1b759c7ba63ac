"""BatchNorm statistics of a frozen model's inputs, captured with forward hooks.

DeepInversion's R_BN compares, at every BatchNorm layer, the statistics of the batch entering it
with the running statistics the layer learnt on real data; CMI reads the per-sample channel means
at the same layers. :class:`BatchNormStatistics` hooks every ``torch.nn`` batch-norm layer (1-D,
2-D, 3-D, SyncBatchNorm), and therefore SpeechBrain's ``BatchNorm1d``/``BatchNorm2d`` wrappers,
which hold one such layer and hand it channels-first input. The hooks are removed on exit.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from kd_modules.losses.base import fp32
from kd_modules.losses.inversion import bn_statistics_gap


class BatchNormStatistics:
    """Record, for each forward of ``model``, every BatchNorm input's statistics.

    After a forward: ``gaps`` holds one scalar ``‖μ − μ̄‖₂ + ‖σ² − σ̄²‖₂`` per layer, in execution
    order; ``instance_means`` (when ``instance_means=True``) one ``(B, C)`` tensor per layer, the
    mean of each sample's channels over its other axes (time, frequency). With ``rows`` set, only
    the first ``rows`` samples of each batch count (the others ride along in a fused forward;
    eval-mode BatchNorm treats samples independently). Statistics keep the
    graph to the input, so a loss on them trains the input. A layer met in training mode raises:
    it would update its running statistics (and normalise with batch statistics). Use as a
    context manager (``with BatchNormStatistics(teacher) as bn:``) or call ``remove()``.
    """

    def __init__(self, model: nn.Module, instance_means: bool = False) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, _BatchNorm)]
        if not self.layers:
            raise ValueError(f"{type(model).__name__} has no BatchNorm layer to match statistics")
        untracked = [m for m in self.layers if m.running_mean is None]
        if untracked:
            raise ValueError(
                f"{len(untracked)} BatchNorm layer(s) have no running statistics "
                "(track_running_stats=False): nothing to invert against"
            )
        self.keep_instance_means = instance_means
        self.record_gaps = True  # False for passes whose statistics enter no loss (saves work)
        self.rows: int | None = None  # statistics over the first `rows` samples only (None: all)
        self.gaps: list[Tensor] = []
        self.instance_means: list[Tensor] = []
        self._handles = [layer.register_forward_hook(self._hook) for layer in self.layers]

    def _hook(self, module: _BatchNorm, args: tuple, output: Tensor) -> None:
        if module.training:
            raise RuntimeError(
                f"{type(module).__name__} is in training mode during inversion: it would update "
                "the teacher's running statistics. Put the teacher in eval mode."
            )
        x = fp32(args[0][: self.rows])  # (B, C) or (B, C, *); rows: a batch fused with others
        dims = [0, *range(2, x.ndim)]
        if self.record_gaps:
            mean, var = x.mean(dims), x.var(dims, unbiased=False)
            self.gaps.append(bn_statistics_gap(mean, var, module.running_mean, module.running_var))
        if self.keep_instance_means:
            self.instance_means.append(x.mean(dims[1:]) if x.ndim > 2 else x)

    def loss(self, first_weight: float = 1.0) -> Tensor:
        """Sum of the recorded gaps, the first layer's multiplied by ``first_weight``."""
        if not self.gaps:
            raise RuntimeError("no BatchNorm statistics recorded: run a forward pass first")
        return first_weight * self.gaps[0] + sum(self.gaps[1:], self.gaps[0].new_zeros(()))

    def clear(self) -> None:
        """Forget the recorded statistics (call before each forward)."""
        self.gaps, self.instance_means = [], []

    def remove(self) -> None:
        """Remove every hook: the model is exactly as before."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()

    def __enter__(self) -> BatchNormStatistics:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
