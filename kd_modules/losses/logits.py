"""Logit distillation: Hinton KD (single-label) and its sigmoid multi-label variant."""

from __future__ import annotations

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
