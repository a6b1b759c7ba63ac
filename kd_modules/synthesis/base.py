"""The synthesiser interface and DeepInversion, the inversion every other synthesiser extends.

A :class:`Synthesizer` turns target classes into synthetic inputs of a frozen teacher:
``synthesize(targets (B,), frames) -> (B, T, F)`` log-Mel spectrograms (float32, CPU, detached);
for a multi-label teacher (a tagger, ``multi_label=True``) the targets are tag sets, multi-hot
``(B, C)``, and BCE replaces the CE (:func:`inversion_task_loss`).
The teacher is any ``nn.Module`` called as ``teacher(feats (B, T, F), lens)`` that returns a dict
with ``logits`` (B, C) (and ``embedding`` (B, E) for FRAMI). It stays in eval mode and frozen for
the whole synthesis (:func:`frozen`): BatchNorm layers normalise with, and are compared with, their
running statistics, which never change.

:class:`DeepInversion` (Yin et al., CVPR 2020) optimises
``CE(teacher(jitter(x)), y) + λ_bn·R_BN + λ_tv·TV(x) + λ_l2·‖x‖²`` over the spectrograms, either
directly (``parameterization="direct"``: x is the parameter) or through a small generator
(``"generator"``: x = G(z, y), G and z optimised; CMI re-initialises G for every batch).
Subclasses add loss terms with ``extra_terms`` (CMI, FRAMI).
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_modules.losses.inversion import l2_prior, total_variation
from kd_modules.synthesis.hooks import BatchNormStatistics

PARAMETERIZATIONS = ("direct", "generator")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def inversion_task_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """How well the teacher's ``logits`` (B, C) hit the synthesis targets: CE for classes
    ``(B,)`` (one class per sample), mean BCE with logits over every output for multi-hot tag
    sets ``(B, C)`` in {0, 1} (a tagger's sigmoid outputs), in float32."""
    if targets.dim() == 1:
        return F.cross_entropy(logits.float(), targets)
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float())


def target_conditioning(embed: nn.Embedding, targets: Tensor) -> Tensor:
    """A class embedding per sample ``(B, Z)``: the class's row for targets ``(B,)``, the sum of
    the tags' rows for multi-hot tag sets ``(B, C)``."""
    if targets.dim() == 1:
        return embed(targets)
    return targets.float() @ embed.weight


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode with no parameter requiring gradients; both restored on exit.

    Gradients still flow *through* the model to its input, which is what inversion optimises.
    """
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    model.requires_grad_(False)
    try:
        yield model
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        model.train(was_training)


class FrameGenerator(nn.Module):
    """A small generator of log-Mel frames: ``G(z (B, T, Z), y (B,) or (B, C)) -> (B, T, F)``.

    Per-frame noise plus a learned class embedding (summed over a multi-hot tag set), then 1-D
    convolutions over time, so any number of frames T can be generated. It has no BatchNorm
    (only the teacher's norms are matched) and is never part of the teacher.
    """

    def __init__(
        self,
        n_classes: int,
        n_mels: int,
        z_dim: int = 64,
        channels: int = 128,
        layers: int = 3,
        kernel_size: int = 5,
    ) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.embed = nn.Embedding(n_classes, z_dim)
        blocks: list[nn.Module] = []
        width = z_dim
        for _ in range(layers):
            blocks += [nn.Conv1d(width, channels, kernel_size, padding=kernel_size // 2)]
            blocks += [nn.LeakyReLU(0.2)]
            width = channels
        blocks.append(nn.Conv1d(width, n_mels, 1))
        self.net = nn.Sequential(*blocks)

    def forward(self, z: Tensor, targets: Tensor) -> Tensor:
        h = z + target_conditioning(self.embed, targets).unsqueeze(1)  # (B, T, Z)
        return self.net(h.transpose(1, 2)).transpose(1, 2)


class Synthesizer(ABC):
    """Interface: ``synthesize(targets, frames) -> (B, frames, n_mels)`` float32 CPU tensor.

    ``history`` holds, after each call, the unweighted loss terms of every optimisation step
    (name -> list of floats), for logging and for tests.
    """

    name = "synthesizer"

    def __init__(self, teacher: nn.Module, n_mels: int, device: str | torch.device = "cpu"):
        self.teacher = teacher
        self.n_mels = n_mels
        self.device = torch.device(device)
        self.history: dict[str, list[float]] = {}

    @abstractmethod
    def synthesize(self, targets: Tensor, frames: int) -> Tensor:
        """Synthetic inputs ``(B, frames, n_mels)`` that the teacher assigns to ``targets``."""

    def settings(self) -> dict:
        """Every setting that changes the synthetic samples (recorded with a pool)."""
        return {"name": self.name, "n_mels": self.n_mels}

    @property
    def carries_state(self) -> bool:
        """True when a batch's samples depend on the batches synthesised before it."""
        return False

    def state_dict(self) -> dict:
        """What carries over from one batch to the next (tensors, for ``torch.save``)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (a :meth:`state_dict`; ``{}``: as a fresh synthesiser)."""
        if state:
            raise ValueError(f"{self.name} carries no state between batches, got {sorted(state)}")


class DeepInversion(Synthesizer):
    """DeepInversion on log-Mel inputs: CE + BatchNorm statistics + TV and L2 priors.

    Arguments (each a YAML key of ``hparams/synthesis/*.yaml``)
    ---------
    teacher, n_mels, n_classes : the frozen model, the number of Mel bins, the number of classes.
    steps, lr : Adam steps per batch and their learning rate (for x or z). Adam moves x by about
        ``lr`` per step whatever the gradient's scale, so ``lr`` is in feature units (dB for
        log-Mel): 0.25 lets 200 steps reach the ±10–20 dB range of centred clips (ours).
    lambda_bn, first_bn_weight : weight of R_BN, and the extra factor of its first layer (×10 in
        DeepInversion). R_BN compares variances, in squared feature units: on dB log-Mel inputs
        the first layer's gap is ~1e3–1e4 even for real clips, so ``lambda_bn`` must be small
        or R_BN drowns the CE and the teacher does not assign the samples to their targets. The
        gap grows with the teacher: 0.005 (ours, the default) suits a 3-block x-vector (at 0.05:
        10–14 % of a pool classified as its targets, 100 % at 0.005), 0.0005 the recipe's
        5-block ``xvector_large`` (its step-0 gap is ~5× larger; 26 % at 0.005, 95 % at 0.0005).
    lambda_tv, tv_power, lambda_l2 : weights of the total-variation prior (time and frequency,
        power 1 or 2) and of the L2 prior.
    jitter_frames : random circular time shift of up to this many frames at every step.
    init_std : standard deviation of the initial x (direct) or of z (generator); 5.0 (ours) is
        about the scale of centred log-Mel clips (std ≈ 7 dB on FSDD).
    center_time : subtract each bin's mean over time, as the recipe front end's sentence-mean
        normalisation does for real clips (ours: it keeps synthetic inputs in the teacher's input
        domain).
    parameterization : ``direct`` or ``generator``; generator_* keys size :class:`FrameGenerator`,
        ``generator_lr`` its learning rate, ``generator_reset`` a new generator for every batch.
        A generator shares its weights across the batch: give R_BN no more weight than for
        direct inputs.
    device, precision : where to run, and ``fp32``, ``bf16`` or ``fp16`` autocast for the teacher.
    logits_key : the teacher's output holding the logits.
    multi_label : the teacher tags (sigmoid outputs): targets are multi-hot tag sets ``(B, C)``
        and the task term is BCE (``bce``) in place of CE (``ce``); ``n_classes`` is then the
        number of outputs C.
    """

    name = "deepinversion"

    def __init__(
        self,
        teacher: nn.Module,
        n_mels: int,
        n_classes: int,
        steps: int = 200,
        lr: float = 0.25,
        lambda_bn: float = 0.005,
        first_bn_weight: float = 10.0,
        lambda_tv: float = 1e-3,
        tv_power: int = 2,
        lambda_l2: float = 1e-4,
        jitter_frames: int = 10,
        init_std: float = 5.0,
        center_time: bool = True,
        parameterization: str = "direct",
        generator_lr: float = 1e-2,
        generator_reset: bool = True,
        generator_z_dim: int = 64,
        generator_channels: int = 128,
        generator_layers: int = 3,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        logits_key: str = "logits",
        multi_label: bool = False,
    ) -> None:
        super().__init__(teacher, n_mels, device)
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(
                f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}"
            )
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.n_classes, self.steps, self.lr = n_classes, steps, lr
        self.multi_label = multi_label
        self.task_term = "bce" if multi_label else "ce"
        self.weights = {self.task_term: 1.0, "bn": lambda_bn, "tv": lambda_tv, "l2": lambda_l2}
        self.first_bn_weight, self.tv_power = first_bn_weight, tv_power
        self.jitter_frames, self.init_std, self.center_time = jitter_frames, init_std, center_time
        self.parameterization = parameterization
        self.generator_lr, self.generator_reset = generator_lr, generator_reset
        self.generator_shape = (generator_z_dim, generator_channels, generator_layers)
        self._generator: FrameGenerator | None = None
        self.precision, self.logits_key = precision, logits_key
        self.teacher.to(self.device)

    # ----- what is optimised ---------------------------------------------------------------
    def new_generator(self) -> FrameGenerator:
        """A fresh generator (every batch with ``generator_reset``, else once)."""
        if self._generator is None or self.generator_reset:
            z_dim, channels, layers = self.generator_shape
            self._generator = FrameGenerator(
                self.n_classes, self.n_mels, z_dim, channels, layers
            ).to(self.device)
        return self._generator

    @property
    def carries_state(self) -> bool:
        return self.parameterization == "generator" and not self.generator_reset

    def state_dict(self) -> dict:
        """The generator kept over batches, if any (x, z and their Adam are new every batch)."""
        if not self.carries_state or self._generator is None:
            return {}
        return {"generator": self._generator.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self._generator = None
        if "generator" in state:
            self.new_generator().load_state_dict(state["generator"])

    def variables(self, targets: Tensor, frames: int) -> tuple[list[dict], callable]:
        """Adam parameter groups and ``render() -> x (B, T, F)`` for one batch."""
        B = targets.shape[0]
        if self.parameterization == "direct":
            x = torch.randn(B, frames, self.n_mels, device=self.device) * self.init_std
            x.requires_grad_(True)
            return [{"params": [x], "lr": self.lr}], lambda: self.center(x)
        generator = self.new_generator()
        z = torch.randn(B, frames, generator.z_dim, device=self.device) * self.init_std
        z.requires_grad_(True)
        groups = [
            {"params": [z], "lr": self.lr},
            {"params": list(generator.parameters()), "lr": self.generator_lr},
        ]
        return groups, lambda: self.center(generator(z, targets))

    def center(self, x: Tensor) -> Tensor:
        """x minus each bin's mean over time (``center_time``), else x."""
        return x - x.mean(dim=1, keepdim=True) if self.center_time else x

    def jitter(self, x: Tensor) -> Tensor:
        """Circular time shift of the whole batch by up to ``jitter_frames`` frames."""
        if self.jitter_frames <= 0:
            return x
        shift = int(torch.randint(-self.jitter_frames, self.jitter_frames + 1, ()))
        return torch.roll(x, shifts=shift, dims=1)

    # ----- the loss ------------------------------------------------------------------------
    def autocast(self):
        """Autocast for the teacher's forward passes at ``precision`` (a no-op for fp32)."""
        dtype = PRECISIONS[self.precision]
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def teacher_outputs(self, x: Tensor) -> dict:
        """The teacher's outputs for ``x`` (B, T, F), every frame valid."""
        with self.autocast():
            return self.teacher(x, None)

    def inversion_outputs(self, x_in: Tensor, bn: BatchNormStatistics) -> dict:
        """The teacher's outputs for the step's jittered samples ``x_in`` (B, T, F), with their
        BatchNorm statistics recorded in ``bn`` (FRAMI batches its second view in with them)."""
        bn.clear()
        return self.teacher_outputs(x_in)

    def step_terms(self, x: Tensor, targets: Tensor, bn: BatchNormStatistics) -> dict:
        """Unweighted loss terms of one step for the current samples ``x``."""
        outputs = self.inversion_outputs(self.jitter(x), bn)
        terms = {
            self.task_term: inversion_task_loss(outputs[self.logits_key], targets),
            "bn": bn.loss(self.first_bn_weight),
            "tv": total_variation(x, self.tv_power),
            "l2": l2_prior(x),
        }
        terms.update(self.extra_terms(x, outputs, targets, bn))
        return terms

    def extra_terms(self, x: Tensor, outputs: dict, targets: Tensor, bn) -> dict:
        """Further loss terms (CMI, FRAMI); ``outputs`` are those of the jittered x."""
        return {}

    def extra_optimizers(self) -> list[torch.optim.Optimizer]:
        """Optimisers stepped with the samples' (the contrastive projection head's)."""
        return []

    def end_batch(self, x: Tensor, targets: Tensor) -> None:
        """Called with each finished batch (the contrastive memory bank keeps it)."""

    # ----- the loop ------------------------------------------------------------------------
    def check_targets(self, targets: Tensor) -> None:
        """Refuse targets of the other kind: classes ``(B,)`` for a multi-label synthesiser, or
        tag sets ``(B, C)`` for a single-label one (one line, naming the key)."""
        expected = (2, "multi-hot tag sets (B, C)") if self.multi_label else (1, "classes (B,)")
        if targets.dim() != expected[0]:
            raise ValueError(
                f"{self.name} (multi_label={self.multi_label}) synthesises {expected[1]}, got "
                f"targets of shape {tuple(targets.shape)}"
            )

    def synthesize(self, targets: Tensor, frames: int) -> Tensor:
        self.check_targets(targets)
        targets = targets.to(self.device)
        keep_means = getattr(self, "needs_instance_means", False)
        with frozen(self.teacher), BatchNormStatistics(self.teacher, keep_means) as bn:
            groups, render = self.variables(targets, frames)
            samples_optimizer = torch.optim.Adam(groups)
            scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
            steps: list[dict[str, Tensor]] = []
            for _ in range(self.steps):
                terms = self.step_terms(render(), targets, bn)
                loss = sum(self.weights[name] * value for name, value in terms.items())
                optimizers = [samples_optimizer, *self.extra_optimizers()]  # head built lazily
                for optimizer in optimizers:
                    optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                for optimizer in optimizers:
                    scaler.step(optimizer)
                scaler.update()
                steps.append({name: value.detach() for name, value in terms.items()})
            with torch.no_grad():
                x = render().float()
            self.end_batch(x, targets)
        self.history = {name: torch.stack([s[name] for s in steps]).tolist() for name in steps[0]}
        self.check_finite()
        return x.cpu()

    def check_finite(self) -> None:
        """Stop, naming the term and step, when a loss term of the last batch went non-finite."""
        for name, values in self.history.items():
            bad = [step for step, value in enumerate(values) if not math.isfinite(value)]
            if bad:
                raise FloatingPointError(
                    f"{self.name}: loss term '{name}' is {values[bad[0]]} at step {bad[0]} of "
                    f"{self.steps} (weight {self.weights[name]:g}): lower the learning rate or "
                    "this term's weight."
                )

    def settings(self) -> dict:
        return {
            **super().settings(),
            "n_classes": self.n_classes,
            "steps": self.steps,
            "lr": self.lr,
            "weights": self.weights,
            "first_bn_weight": self.first_bn_weight,
            "tv_power": self.tv_power,
            "jitter_frames": self.jitter_frames,
            "init_std": self.init_std,
            "center_time": self.center_time,
            "parameterization": self.parameterization,
            "generator_lr": self.generator_lr,
            "generator_reset": self.generator_reset,
            "generator_shape": list(self.generator_shape),
            "precision": self.precision,
            **({"multi_label": True} if self.multi_label else {}),  # single-label pools: as before
        }
