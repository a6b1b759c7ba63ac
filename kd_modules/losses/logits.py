"""Logit distillation: Hinton KD (single-label), its sigmoid multi-label variant, decoupled KD."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import KDLoss, as_2d, fp32


class HintonKD(KDLoss):
    """``tau² · KL(softmax(z_t/tau) ‖ softmax(z_s/tau))``, mean over the batch.

    Logits (B, C) (or (B, 1, C)), taken in float32. The tau² factor keeps gradient magnitudes
    comparable across temperatures (Hinton et al., 2015).
    """

    def __init__(self, tau: float = 4.0, key: str = "logits"):
        super().__init__()
        self.tau, self.key = tau, key

    def forward(self, student_out, teacher_out, lens=None, targets=None) -> Tensor:
        z_s, z_t = (fp32(as_2d(z, self.key)) for z in self.fetch(student_out, teacher_out))
        log_p_s = F.log_softmax(z_s / self.tau, dim=-1)
        log_p_t = F.log_softmax(z_t / self.tau, dim=-1)
        kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
        return self.tau**2 * kl


class SigmoidKD(KDLoss):
    """Multi-label KD: BCE between ``σ(z_s/tau)`` and the soft target ``σ(z_t/tau)``.

    Logits (B, C) (or (B, 1, C)), taken in float32; mean over batch and tags. Computed from the
    student logits with ``binary_cross_entropy_with_logits`` for numerical stability.
    """

    def __init__(self, tau: float = 1.0, key: str = "logits"):
        super().__init__()
        self.tau, self.key = tau, key

    def forward(self, student_out, teacher_out, lens=None, targets=None) -> Tensor:
        z_s, z_t = (fp32(as_2d(z, self.key)) for z in self.fetch(student_out, teacher_out))
        return F.binary_cross_entropy_with_logits(z_s / self.tau, (z_t / self.tau).sigmoid())


class DecoupledKD(KDLoss):
    """Decoupled KD (Zhao et al., CVPR 2022): ``tau² · (alpha · TCKD + beta · NCKD)``, batch mean.

    With ``p = softmax(z/tau)`` over the C classes and y the true class of a clip:

    - TCKD = ``KL(b_t ‖ b_s)``, b = (p_y, 1 − p_y) the target / non-target binary pair;
    - NCKD = ``KL(p̂_t ‖ p̂_s)``, p̂ = softmax over the C − 1 non-target logits (p renormalised
      without y).

    Hinton KD is ``TCKD + (1 − p_t,y) · NCKD``: the teacher's confidence damps NCKD there; DKD
    weighs it freely with ``beta`` (the non-target weight). Logits (B, C) or (B, 1, C), C >= 2;
    ``targets`` (B,) (or (B, 1)) class ids, required. Every step in float32 and in log space:
    ``log(1 − p_y)`` is a logsumexp of the non-target log-probabilities (exact, where
    ``log1p(-p_y)`` is -inf once p_y rounds to 1), and p̂ is the softmax of the logits with the
    target column removed (gathered by index: no sentinel value, no GPU sync).
    """

    def __init__(
        self, alpha: float = 1.0, beta: float = 8.0, tau: float = 4.0, key: str = "logits"
    ):
        super().__init__()
        self.alpha, self.beta, self.tau, self.key = alpha, beta, tau, key

    def forward(self, student_out, teacher_out, lens=None, targets=None) -> Tensor:
        z_s, z_t = (fp32(as_2d(z, self.key)) for z in self.fetch(student_out, teacher_out))
        ids = self._class_ids(targets, z_s.shape)
        rest = _non_target_columns(ids, z_s.shape[1])
        tckd = _kl(*(_binary_log_probs(z / self.tau, ids, rest) for z in (z_t, z_s)))
        nckd = _kl(*(F.log_softmax(z.gather(1, rest) / self.tau, dim=-1) for z in (z_t, z_s)))
        return self.tau**2 * (self.alpha * tckd + self.beta * nckd).mean()

    def _class_ids(self, targets: Tensor | None, shape: torch.Size) -> Tensor:
        """``targets`` (B,) or (B, 1) as (B,) int64 class ids, checked against logits (B, C)."""
        name, (B, C) = type(self).__name__, shape
        if targets is None:
            raise ValueError(
                f"{name} needs targets: the class ids (B,) that split target and non-target "
                "classes; got None"
            )
        ids = targets.reshape(-1).long()
        if ids.numel() != B:
            raise ValueError(f"{name}: targets of shape {tuple(targets.shape)} for {B} clips")
        if C < 2:
            raise ValueError(f"{name} needs at least 2 classes, got logits of {C}")
        return ids


def _non_target_columns(ids: Tensor, C: int) -> Tensor:
    """(B, C − 1) indices of the classes other than ``ids`` (B,), in class order."""
    cols = torch.arange(C - 1, device=ids.device).expand(len(ids), -1)
    return cols + (cols >= ids.unsqueeze(1)).long()


def _binary_log_probs(z: Tensor, ids: Tensor, rest: Tensor) -> Tensor:
    """(B, 2) log (p_y, 1 − p_y) of ``p = softmax(z)`` (B, C); ``rest`` the non-target columns."""
    log_p = F.log_softmax(z, dim=-1)
    log_p_target = log_p.gather(1, ids.unsqueeze(1))
    log_p_rest = log_p.gather(1, rest).logsumexp(-1, keepdim=True)
    return torch.cat([log_p_target, log_p_rest], dim=-1)


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Per-row ``KL(p ‖ q)`` (B,) of log-probabilities (B, K)."""
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)
