"""Multi-label taggers on log-Mel input: CNNs (teacher and students) and a one-conv + LSTM student.

Every tagger maps features ``(B, T, F)`` and relative lengths ``(B,)`` to
``{"logits": (B, K), "embedding": (B, D)}`` and passes its last frame-level representation
``(B, T', D)`` through a module named ``frames`` (an identity), so that frame-relation KD losses
(IUSP, SP, FitNets) tap ``frames`` in every architecture, whatever its time resolution T' and
width D. The clip embedding is the mean plus the max of the valid frames (PANNs' pooling);
padded frames never enter it.
"""

from __future__ import annotations

import torch
from torch import nn

from kd_modules.losses.base import length_mask


def conv_block(in_ch: int, out_ch: int, convs: int, pool: tuple[int, int]) -> nn.Sequential:
    """``convs`` × (3×3 conv, BatchNorm, ReLU), then average pooling by ``pool`` (time, freq);
    maps ``(B, in_ch, T, F)`` to ``(B, out_ch, T / pool[0], F / pool[1])``."""
    layers: list[nn.Module] = []
    for index in range(convs):
        channels = in_ch if index == 0 else out_ch
        layers += [
            nn.Conv2d(channels, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(),
        ]
    layers.append(nn.AvgPool2d(pool))
    return nn.Sequential(*layers)


def frame_lens(lens: torch.Tensor | None, frames: int, batch: int) -> torch.Tensor:
    """Valid-frame mask ``(B, T')`` for ``frames`` output frames (all valid without ``lens``)."""
    if lens is None:
        return torch.ones(batch, frames, dtype=torch.bool)
    return length_mask(lens, frames)


def mean_max_pool(frames: torch.Tensor, lens: torch.Tensor | None) -> torch.Tensor:
    """Mean + max over the valid frames of ``(B, T, D)`` -> ``(B, D)``."""
    mask = frame_lens(lens, frames.shape[1], frames.shape[0]).to(frames.device).unsqueeze(-1)
    mean = (frames * mask).sum(1) / mask.sum(1).clamp(min=1)
    peak = frames.masked_fill(~mask, torch.finfo(frames.dtype).min).amax(1)
    return mean + peak


class CNNTagger(nn.Module):
    """VGG-style CNN tagger: conv blocks over (time, mel), frequency averaged out, then pooling.

    Arguments
    ---------
    n_mels : int
        F, the number of mel bands of the input.
    n_outputs : int
        K, the number of tags (sigmoid outputs).
    channels : list of int
        Output channels of each block (the last is the ``frames`` width D).
    convs_per_block : int
        3×3 convolutions per block (2 in PANNs' CNN10, 1 in the small students).
    time_pools : list of int, optional
        Time pooling factor of each block (default 2 each); frequency is always pooled by 2.
    dropout : float
        Dropout on the embedding before the output layer.
    """

    def __init__(
        self,
        n_mels: int,
        n_outputs: int,
        channels: list[int],
        convs_per_block: int = 1,
        time_pools: list[int] | None = None,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        time_pools = time_pools or [2] * len(channels)
        if len(time_pools) != len(channels):
            raise ValueError(f"{len(channels)} blocks but {len(time_pools)} time_pools")
        ins = [1, *channels[:-1]]
        self.blocks = nn.Sequential(
            *(
                conv_block(i, o, convs_per_block, (p, 2))
                for i, o, p in zip(ins, channels, time_pools)
            )
        )
        self.frames = nn.Identity()
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels[-1], n_outputs))

    def forward(self, feats: torch.Tensor, lens: torch.Tensor | None = None) -> dict:
        """``(B, T, F)`` -> logits ``(B, K)`` and embedding ``(B, D)``."""
        maps = self.blocks(feats.unsqueeze(1))  # (B, C, T', F')
        frames = self.frames(maps.mean(3).transpose(1, 2))  # (B, T', C)
        embedding = mean_max_pool(frames, lens)
        return {"logits": self.head(embedding), "embedding": embedding}


class ConvLSTMTagger(nn.Module):
    """One conv block, then one unidirectional LSTM over time: a student of ~40k parameters.

    The conv block (``conv``: 3×3 conv, BatchNorm, ReLU, pooling by ``(time_pool, freq_pool)``)
    gives ``(B, C, T', F')``, flattened per frame to ``C·F'`` for the LSTM (``lstm``); its hidden
    states ``(B, T', H)`` are the ``frames``. The LSTM runs forward only, so the padding at the
    end of a clip never changes its valid frames.
    """

    def __init__(
        self,
        n_mels: int,
        n_outputs: int,
        conv_channels: int = 16,
        hidden: int = 48,
        time_pool: int = 2,
        freq_pool: int = 8,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.conv = conv_block(1, conv_channels, 1, (time_pool, freq_pool))
        self.lstm = nn.LSTM(conv_channels * (n_mels // freq_pool), hidden, batch_first=True)
        self.frames = nn.Identity()
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, n_outputs))

    def forward(self, feats: torch.Tensor, lens: torch.Tensor | None = None) -> dict:
        """``(B, T, F)`` -> logits ``(B, K)`` and embedding ``(B, H)``."""
        maps = self.conv(feats.unsqueeze(1))  # (B, C, T', F')
        hidden, _ = self.lstm(maps.permute(0, 2, 1, 3).flatten(2))  # (B, T', H)
        frames = self.frames(hidden)
        embedding = mean_max_pool(frames, lens)
        return {"logits": self.head(embedding), "embedding": embedding}
