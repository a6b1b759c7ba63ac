"""Multi-level logit distillation (MLKD, Jin et al., CVPR 2023), as IML-KD uses it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import KDLoss, as_2d, fp32, fp32_matmul, projection


def _softmax_kl(z_s: Tensor, z_t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``KL(softmax(z_t) ‖ softmax(z_s))`` (batch mean) and the two probabilities (B, C)."""
    log_p_s, log_p_t = F.log_softmax(z_s, dim=-1), F.log_softmax(z_t, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl, log_p_s.exp(), log_p_t.exp()


def _sigmoid_kl(z_s: Tensor, z_t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Σ_k of the Bernoulli ``KL(σ(z_t,k) ‖ σ(z_s,k))`` (batch mean) and the two σ(z) (B, K).

    In log space (``logsigmoid(±z)``): no log of a probability that rounds to 0 or 1."""
    p_s, p_t = torch.sigmoid(z_s), torch.sigmoid(z_t)
    pos = p_t * (F.logsigmoid(z_t) - F.logsigmoid(z_s))
    neg = (1 - p_t) * (F.logsigmoid(-z_t) - F.logsigmoid(-z_s))
    return (pos + neg).sum() / z_s.shape[0], p_s, p_t


_INSTANCE_KL = {"softmax": _softmax_kl, "sigmoid": _sigmoid_kl}


class MultiLevelKD(KDLoss):
    """Instance, class and batch alignment of ``p = softmax(z/tau)``, each summed over ``taus``.

    Logits (B, C) (or (B, 1, C)), p (B, C), every term in float32. ``probabilities="sigmoid"``
    is the multi-label form (tagging): ``p = sigmoid(z/tau)``, each output a Bernoulli, and the
    instance KL the sum over outputs of the Bernoulli KLs; the class and batch terms are the same
    formulas on that p (its rows no longer sum to 1).

    - instance: ``tau² · KL(p_t ‖ p_s)`` (batch mean), plus, when ``embedding_key`` is given, the
      squared L2 distance between the projected student and the teacher embeddings (batch mean;
      added once, it does not depend on tau). The projection is linear when ``student_dim`` and
      ``teacher_dim`` differ, identity otherwise;
    - class: ``‖p_tᵀp_t − p_sᵀp_s‖²_F / C`` (C×C class correlations);
    - batch: ``‖p_t p_tᵀ − p_s p_sᵀ‖²_F / B`` (B×B sample correlations).
    """

    def __init__(
        self,
        taus: Sequence[float] = (2, 3, 4, 5, 6),
        key: str = "logits",
        embedding_key: str | None = None,
        student_dim: int | None = None,
        teacher_dim: int | None = None,
        probabilities: str = "softmax",
    ):
        super().__init__()
        if probabilities not in _INSTANCE_KL:
            raise ValueError(
                f"probabilities must be one of {sorted(_INSTANCE_KL)}, got {probabilities!r}"
            )
        self.taus, self.key, self.embedding_key = tuple(taus), key, embedding_key
        self.instance_kl = _INSTANCE_KL[probabilities]
        self.proj = projection(student_dim, teacher_dim) if embedding_key else None

    def forward_terms(
        self,
        student_out: dict[str, Tensor],
        teacher_out: dict[str, Tensor],
        lens: Tensor | None = None,
        targets: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The three terms separately (for logging): ``{"instance", "class", "batch"}``."""
        z_s, z_t = (fp32(as_2d(z, self.key)) for z in self.fetch(student_out, teacher_out))
        B, C = z_s.shape
        inst = cls = bat = z_s.new_zeros(())
        for tau in self.taus:
            kl, p_s, p_t = self.instance_kl(z_s / tau, z_t / tau)
            inst = inst + tau**2 * kl
            cls = cls + (fp32_matmul(p_t.T, p_t) - fp32_matmul(p_s.T, p_s)).pow(2).sum() / C
            bat = bat + (fp32_matmul(p_t, p_t.T) - fp32_matmul(p_s, p_s.T)).pow(2).sum() / B
        if self.embedding_key is not None:
            pair = self.fetch(student_out, teacher_out, self.embedding_key)
            e_s, e_t = (as_2d(e, self.embedding_key) for e in pair)
            inst = inst + (fp32(self.proj(e_s)) - fp32(e_t)).pow(2).sum(-1).mean()
        return {"instance": inst, "class": cls, "batch": bat}

    def forward(self, student_out, teacher_out, lens=None, targets=None) -> Tensor:
        return sum(self.forward_terms(student_out, teacher_out, lens, targets).values())
