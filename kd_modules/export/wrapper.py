"""The deployable model: raw 16 kHz waveforms and their lengths in, the recipe's outputs out.

:class:`DeployedModel` chains a :class:`~kd_modules.export.frontend.DeployableFrontEnd` and a
recipe's model (its ``{"logits", "embedding", ...}`` dict) and returns what the recipe's
evaluation reads: class probabilities (softmax of the logits; an ensemble's logits are already
the log of its mean probability), tag scores (sigmoid) or the speaker embedding (cosine-scored).

It runs a copy of the model (:func:`deployable_copy`), in eval mode, that differs in two ways:

- SpeechBrain's statistics pooling adds Gaussian noise scaled to [1e-5, 9e-5] to the pooled mean
  in eval mode too (``StatisticsPooling._get_gauss_noise``). Exported, it would be a
  ``RandomNormal`` op: two runs on one clip would differ and no parity check could tell an export
  error from the noise. The noise is a numerical jitter, not something the weights learned, so the
  copy adds none: the export is deterministic and equals the PyTorch model with the noise off.
- Every SpeechBrain ``Conv1d`` is length-aware (:mod:`kd_modules.models.padding`, same weights),
  so a clip's output in a padded batch is its output alone in every architecture (the speaker
  model's ECAPA is not otherwise: verification embeds one utterance at a time).
"""

from __future__ import annotations

import copy

import torch
from speechbrain.nnet.pooling import StatisticsPooling
from torch import nn

from kd_modules.export.compat import use_traceable_xvectors
from kd_modules.export.frontend import DeployableFrontEnd
from kd_modules.models.padding import LengthAwareConv1d, batch_lengths, use_length_aware_convs

#: the output each task deploys, named as in the exported graphs
TASK_OUTPUTS = {
    "sound_classification": "probabilities",
    "audio_tagging": "tag_scores",
    "speaker_verification": "embedding",
}
INPUT_NAMES = ("wavs", "lengths")


class NoiseFreeStatisticsPooling(StatisticsPooling):
    """Mixed in before a statistics-pooling class: the noise on the mean is zero."""

    def _get_gauss_noise(self, shape_of_tensor, device="cpu") -> torch.Tensor:
        return torch.zeros(shape_of_tensor, device=device)


_NOISE_FREE: dict[type, type] = {}


def noise_free_class(cls: type) -> type:
    """``cls`` (a ``StatisticsPooling`` or subclass) with :class:`NoiseFreeStatisticsPooling`
    first in its method order."""
    if issubclass(cls, NoiseFreeStatisticsPooling):
        return cls
    if cls not in _NOISE_FREE:
        _NOISE_FREE[cls] = type(f"NoiseFree{cls.__name__}", (NoiseFreeStatisticsPooling, cls), {})
    return _NOISE_FREE[cls]


def deployable_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with noise-free statistics pooling, length-aware
    convolutions and traceable x-vectors (:mod:`kd_modules.export.compat`); same weights."""
    model = use_traceable_xvectors(use_length_aware_convs(copy.deepcopy(model))).eval()
    for module in model.modules():
        if isinstance(module, StatisticsPooling):
            module.__class__ = noise_free_class(type(module))
    return model.requires_grad_(False)


def task_output(task: str, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """What ``task``'s evaluation reads from a model's outputs: ``(B, K)``."""
    if task == "sound_classification":
        return outputs["logits"].softmax(-1)
    if task == "audio_tagging":
        return outputs["logits"].sigmoid()
    return outputs["embedding"]


class DeployedModel(nn.Module):
    """``(wavs (B, S) float32 at 16 kHz, lengths (B,) int64 samples) -> (B, K)`` outputs.

    Arguments
    ---------
    front_end : DeployableFrontEnd
        The recipe's features, per clip.
    model : nn.Module
        The recipe's model, ``model(feats, frame_lens) -> {"logits": (B, C), "embedding": ...}``
        (copied, see :func:`deployable_copy`).
    task : str
        One of :data:`TASK_OUTPUTS`: what the output is.
    """

    def __init__(self, front_end: DeployableFrontEnd, model: nn.Module, task: str) -> None:
        super().__init__()
        if task not in TASK_OUTPUTS:
            raise ValueError(f"task must be one of {sorted(TASK_OUTPUTS)}, not {task!r}")
        self.front_end, self.model, self.task = front_end, deployable_copy(model), task
        self._convs = [m for m in self.model.modules() if isinstance(m, LengthAwareConv1d)]
        self.eval()

    @property
    def output_name(self) -> str:
        return TASK_OUTPUTS[self.task]

    def forward(self, wavs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The task's output ``(B, K)`` for each clip's first ``lengths`` samples."""
        feats, frame_lens = self.front_end(wavs, lengths)
        with batch_lengths(self._convs, frame_lens):
            outputs = self.model(feats, frame_lens)
        return task_output(self.task, outputs)


class RecipePipeline(nn.Module):
    """The recipe's own eager pipeline with :class:`DeployedModel`'s interface: SpeechBrain's
    front end (``kd_modules.replay.FrontEnd``) and the noise-free model, for the latency
    baseline ("eager PyTorch") and as what the exported files must equal."""

    def __init__(self, front_end: nn.Module, model: nn.Module, task: str) -> None:
        super().__init__()
        self.front_end, self.model, self.task = front_end, deployable_copy(model), task
        self.eval()

    def forward(self, wavs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The task's output ``(B, K)``; ``lengths`` in samples."""
        feats, frame_lens = self.front_end.features_and_lengths(wavs, lengths / wavs.shape[1])
        return task_output(self.task, self.model(feats, frame_lens))
