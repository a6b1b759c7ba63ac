"""Contrastive inversion: CMI (BN instance means) and FRAMI (the teacher's pooled embedding).

Both add ``λ_c · InfoNCE`` to DeepInversion's loss: two views of each synthetic sample are
positives, the other samples of the batch and a memory bank of earlier batches are negatives, and
a small projection head (trained with the samples) maps the teacher's features to the contrastive
space. They differ in the features and views:

- :class:`CMI` (Fang et al., IJCAI 2021): the per-sample channel means at every BatchNorm layer,
  concatenated;
- :class:`FRAMI` (Kang et al., ICASSP 2023): the teacher's pooled utterance embedding, over two
  audio-domain views (:class:`AudioViews`: time shift/crop, time and frequency masking, gain).

With ``share_view=True`` (default, ours) the first view is the jittered sample the inversion loss
already runs through the teacher, so each step costs one extra (cropped, hence shorter) teacher
pass; ``share_view=False`` draws two fresh views (two extra passes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_modules.losses.inversion import info_nce
from kd_modules.synthesis.base import DeepInversion


@dataclass
class AudioViews:
    """Random audio-domain views of log-Mel batches ``(B, T, F) -> (B, T', F)``.

    One crop length ``T' = round(T·u)``, u ~ U(crop_min, crop_max), for the batch; each sample gets
    its own circular start (a time shift and crop in one), ``time_masks`` time masks of up to
    ``time_mask_frames`` frames and ``freq_masks`` frequency masks of up to ``freq_mask_bins``
    bins (set to 0, the time mean of centred inputs), and a gain of U(−gain_db, gain_db) dB added
    to every bin (log-Mel in dB: a gain is an offset). All defaults are ours.
    """

    crop_min: float = 0.5
    crop_max: float = 0.9
    time_masks: int = 2
    time_mask_frames: int = 10
    freq_masks: int = 2
    freq_mask_bins: int = 5
    gain_db: float = 3.0

    def __post_init__(self) -> None:
        if not 0 < self.crop_min <= self.crop_max <= 1:
            raise ValueError(
                f"need 0 < crop_min <= crop_max <= 1, got {self.crop_min}, {self.crop_max}"
            )

    def __call__(self, x: Tensor) -> Tensor:
        B, T, n_bins = x.shape
        u = float(torch.empty(()).uniform_(self.crop_min, self.crop_max))
        length = max(1, round(T * u))
        start = torch.randint(0, T, (B, 1), device=x.device)
        index = (start + torch.arange(length, device=x.device)) % T  # (B, T')
        view = x.gather(1, index.unsqueeze(-1).expand(-1, -1, n_bins))
        keep = self._mask(B, length, self.time_masks, self.time_mask_frames, x.device)
        keep_bins = self._mask(B, n_bins, self.freq_masks, self.freq_mask_bins, x.device)
        view = view * keep.unsqueeze(2).to(x.dtype) * keep_bins.unsqueeze(1).to(x.dtype)
        gain = torch.empty(B, 1, 1, device=x.device).uniform_(-self.gain_db, self.gain_db)
        return view + gain.to(x.dtype)

    @staticmethod
    def _mask(B: int, size: int, count: int, width: int, device) -> Tensor:
        """(B, size) bool, False inside ``count`` random bands of up to ``width`` per row."""
        keep = torch.ones(B, size, dtype=torch.bool, device=device)
        positions = torch.arange(size, device=device)
        for _ in range(count):
            widths = torch.randint(0, width + 1, (B, 1), device=device)
            starts = torch.randint(0, max(1, size - width + 1), (B, 1), device=device)
            keep &= ~((positions >= starts) & (positions < starts + widths))
        return keep


class MemoryBank:
    """FIFO of the newest ``size`` L2-normalised projections (detached) of earlier batches."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: Tensor | None = None

    def push(self, z: Tensor) -> None:
        z = F.normalize(z.detach().float(), dim=1)
        merged = z if self.entries is None else torch.cat([self.entries, z])
        self.entries = merged[-self.size :] if self.size > 0 else None

    def __len__(self) -> int:
        return 0 if self.entries is None else self.entries.shape[0]


class ContrastiveInversion(DeepInversion):
    """DeepInversion + ``λ_c · InfoNCE(head(f(view_a)), head(f(view_b)))`` with a memory bank.

    Extra arguments: ``lambda_contrastive`` (λ_c, 0.8 as CMI), ``tau`` (0.1), ``bank_size``,
    ``head_hidden``/``head_dim`` (the projection MLP), ``head_lr``, ``views`` (an
    :class:`AudioViews`), ``share_view`` (see the module docstring). Subclasses define
    ``features(outputs, bn) -> (B, D)``. The head persists across batches (it keeps learning what
    separates samples); the bank receives each finished batch's projections, so a sample is
    never its own negative.
    """

    name = "contrastive"

    def __init__(
        self,
        *args,
        lambda_contrastive: float = 0.8,
        tau: float = 0.1,
        bank_size: int = 4096,
        head_hidden: int = 256,
        head_dim: int = 128,
        head_lr: float = 1e-3,
        views: AudioViews | None = None,
        share_view: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.weights["contrastive"] = lambda_contrastive
        self.tau, self.head_lr, self.share_view = tau, head_lr, share_view
        self.head_shape = (head_hidden, head_dim)
        self.views = views if views is not None else AudioViews()
        self.bank = MemoryBank(bank_size)
        self.head: nn.Module | None = None
        self._head_optimizer: torch.optim.Optimizer | None = None
        self._last_projection: Tensor | None = None

    def features(self, outputs: dict, bn) -> Tensor:
        """Per-sample features ``(B, D)`` of the forward that produced ``outputs``."""
        raise NotImplementedError

    def _build_head(self, in_features: int) -> None:
        """A new projection head ``(B, in_features) -> (B, head_dim)`` and its Adam."""
        hidden, dim = self.head_shape
        self.head = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, dim)
        ).to(self.device)
        self._head_optimizer = torch.optim.Adam(self.head.parameters(), lr=self.head_lr)

    def _project(self, features: Tensor) -> Tensor:
        if self.head is None:  # built at the first batch, when D is known
            self._build_head(features.shape[1])
        return self.head(features.float())

    def view_features(self, x: Tensor, bn) -> Tensor:
        """Features of a fresh random view of ``x`` (its BN statistics enter no loss)."""
        bn.clear()
        bn.record_gaps = False
        try:
            return self.features(self.teacher_outputs(self.views(x)), bn)
        finally:
            bn.record_gaps = True

    def extra_terms(self, x: Tensor, outputs: dict, targets: Tensor, bn) -> dict:
        first = self.features(outputs, bn) if self.share_view else self.view_features(x, bn)
        z_a = self._project(first)
        z_b = self._project(self.view_features(x, bn))
        self._last_projection = z_a.detach()
        return {"contrastive": info_nce(z_a, z_b, self.tau, self.bank.entries)}

    def extra_optimizers(self) -> list[torch.optim.Optimizer]:
        return [self._head_optimizer] if self._head_optimizer is not None else []

    def end_batch(self, x: Tensor, targets: Tensor) -> None:
        if self._last_projection is not None:
            self.bank.push(self._last_projection)

    @property
    def carries_state(self) -> bool:
        return True

    def state_dict(self) -> dict:
        """The projection head, its Adam state and the memory bank (B·k, head_dim), as far as
        the batches so far have built them."""
        state = super().state_dict()
        if self.head is not None:
            state["head"] = self.head.state_dict()
            state["head_optimizer"] = self._head_optimizer.state_dict()
        if self.bank.entries is not None:
            state["bank"] = self.bank.entries
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.head = self._head_optimizer = None
        if "head" in state:
            self._build_head(state["head"]["0.weight"].shape[1])
            self.head.load_state_dict(state["head"])
            self._head_optimizer.load_state_dict(state["head_optimizer"])
        bank = state.get("bank")
        self.bank.entries = None if bank is None else bank.to(self.device)

    def settings(self) -> dict:
        return {
            **super().settings(),
            "tau": self.tau,
            "bank_size": self.bank.size,
            "head_shape": list(self.head_shape),
            "head_lr": self.head_lr,
            "views": asdict(self.views),
            "share_view": self.share_view,
        }


class CMI(ContrastiveInversion):
    """CMI-style inversion: InfoNCE over the concatenated BatchNorm instance means."""

    name = "cmi"
    needs_instance_means = True

    def features(self, outputs: dict, bn) -> Tensor:
        return torch.cat(bn.instance_means, dim=1)


class FRAMI(ContrastiveInversion):
    """FRAMI: InfoNCE over the teacher's pooled embedding of two audio-domain views.

    ``embedding_key``: the teacher output holding the pooled embedding (B, E) (or (B, 1, E)).
    ``fuse_views`` (with ``share_view``): view B (shorter, T' frames) is zero-padded to T and runs
    through the teacher in one forward with the inversion batch, ``(2B, T, F)`` with relative
    lengths ``[1]*B + [T'/T]*B``, instead of a second forward. The teacher is in eval mode, so
    each sample's outputs are its own; BatchNorm statistics count the first B rows only, and
    statistics pooling ignores the padding (the convolutions see zeros past T' where a separate
    pass would pad by reflection: the last few frames of view B differ). One pass of 2B rows does
    more arithmetic than two passes (B, T) + (B, T'), but launches half the kernels: faster where
    the step is bound by launches (a GPU at these model sizes), slower where it is bound by
    arithmetic (a CPU): ours, a key in hparams/synthesis/frami.yaml.
    """

    name = "frami"

    def __init__(
        self, *args, embedding_key: str = "embedding", fuse_views: bool = False, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        self.embedding_key = embedding_key
        self.fuse_views = fuse_views and self.share_view
        self._view_b: Tensor | None = None

    def features(self, outputs: dict, bn) -> Tensor:
        embedding = outputs[self.embedding_key]
        return embedding.reshape(embedding.shape[0], -1)

    def inversion_outputs(self, x_in: Tensor, bn) -> dict:
        if not self.fuse_views:
            return super().inversion_outputs(x_in, bn)
        view = self.views(x_in)  # circularly shifted anyway: jittering x first changes nothing
        B, T = x_in.shape[:2]
        padded = F.pad(view, (0, 0, 0, T - view.shape[1]))
        lens = torch.ones(2 * B, device=x_in.device)
        lens[B:] = view.shape[1] / T
        bn.clear()
        bn.rows = B
        try:
            with self.autocast():
                outputs = self.teacher(torch.cat([x_in, padded]), lens)
        finally:
            bn.rows = None
        self._view_b = self.features({self.embedding_key: outputs[self.embedding_key][B:]}, bn)
        return {name: value[:B] for name, value in outputs.items()}

    def view_features(self, x: Tensor, bn) -> Tensor:
        if self._view_b is None:
            return super().view_features(x, bn)
        features, self._view_b = self._view_b, None
        return features

    def settings(self) -> dict:
        return {**super().settings(), "fuse_views": self.fuse_views}
