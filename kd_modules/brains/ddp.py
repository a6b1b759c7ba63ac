"""Keeping DDP ranks in step: the seeded DDP sampler, CPU DDP, and placeholder batches.

SpeechBrain's ``Brain`` builds the DDP sampler and wraps the modules in private methods; the two
overrides that fix them for this toolkit live in :class:`DDPBrain`, the base of every brain here.
A placeholder batch stands for a batch whose clips were all unreadable
(:class:`~kd_modules.dataio.SkipBadCollate`): the rank runs the same passes on zero audio as the
other ranks do on real clips, so that the gradient all-reduce still matches, with norm running
statistics left alone (:func:`running_stats_kept`), zeros for the cached teacher outputs
(:func:`placeholder_outputs`) and a loss of exactly 0 (:func:`zero_loss`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import speechbrain as sb
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler


def unwrap_module(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return module.module if isinstance(module, DistributedDataParallel) else module


@contextmanager
def running_stats_kept(module: nn.Module, keep: bool = True) -> Iterator[None]:
    """Run ``module`` (with ``keep``) without changing its norm layers' running statistics.

    For a placeholder batch (zero audio) in train mode: momentum 0 leaves BatchNorm's running mean
    and variance as they were, while the layers still do everything else, SyncBatchNorm's
    collectives included, as for a real batch; ``num_batches_tracked`` is restored afterwards.
    """
    modules = module.modules() if keep else ()
    norms = [m for m in modules if isinstance(getattr(m, "running_mean", None), torch.Tensor)]
    saved = [(m, m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for norm in norms:
        norm.momentum = 0.0
    try:
        yield
    finally:
        for norm, momentum, tracked in saved:
            norm.momentum = momentum
            norm.num_batches_tracked.copy_(tracked)


def placeholder_outputs(example: dict, batch_size: int, device) -> dict:
    """Zeros ``(B, ...)`` shaped like one cached utterance's outputs ``example`` (name -> tensor):
    the cached teacher's side of a placeholder batch, whose loss is multiplied by 0."""
    return {
        name: value.new_zeros(batch_size, *value.shape).to(device)
        for name, value in example.items()
    }


def zero_loss(task_loss: torch.Tensor, kd_terms: dict | None) -> torch.Tensor:
    """Exactly 0 from the same graph as a real batch's loss: ``task_loss`` plus every KD term
    (``kd_terms``, name -> scalar, when the batch has teacher outputs), times 0. Every trained
    parameter joins the all-reduce with a zero gradient; nothing is logged."""
    loss = task_loss
    if kd_terms is not None:
        loss = loss + sum(kd_terms.values())
    return loss * 0.0


class DDPBrain(sb.Brain):
    """``sb.Brain`` whose DDP sampler follows the run's seed and whose CPU DDP works with BatchNorm
    (both through SpeechBrain's private set-up methods, overridden here and nowhere else)."""

    def _train_loader_specifics(self, dataset, loader_kwargs: dict) -> dict:
        """SpeechBrain's training-loader set-up, with a DDP sampler seeded by the run's seed.

        SpeechBrain's DistributedSampler keeps torch's default seed 0, so under DDP ``--seed``
        would not change the data order. Every rank reads the same seed, so the ranks still
        shuffle with one permutation and take disjoint shards of it; ``set_epoch`` still
        reshuffles every epoch.
        """
        loader_kwargs = super()._train_loader_specifics(dataset, loader_kwargs)
        if isinstance(self.train_sampler, DistributedSampler):
            self.train_sampler.seed = self.data_seed()
        return loader_kwargs

    def data_seed(self) -> int:
        """The seed of the training data order: hparams ``seed``, else SpeechBrain's own
        (``SB_GLOBAL_SEED``, which seeds the single-process sampler, with its default)."""
        seed = getattr(self.hparams, "seed", None)
        return int(os.environ.get("SB_GLOBAL_SEED", 563375142) if seed is None else seed)

    def _wrap_distributed(self) -> None:
        """DDP on CPU (gloo) without SyncBatchNorm, which PyTorch only supports on accelerators.

        Buffers are not broadcast at each forward: plain BatchNorm saves its running statistics
        for the backward, and a step that runs the model twice (IML-KD's second pass on the
        integrated input) would have them overwritten in place on ranks > 0 between the forward
        and the backward (autograd's "modified by an inplace operation"). Each rank keeps its own
        running statistics; the checkpoint holds rank 0's.
        """
        if self.distributed_launch and torch.device(self.device).type == "cpu":
            for name, module in self.modules.items():
                if any(p.requires_grad for p in module.parameters()):
                    self.modules[name] = DistributedDataParallel(
                        module,
                        find_unused_parameters=self.find_unused_parameters,
                        broadcast_buffers=False,
                    )
            return
        super()._wrap_distributed()
