"""Multi-label taggers on log-Mel input: CNNs (teacher and students) and a one-conv + LSTM student.

Every tagger maps features ``(B, T, F)`` and relative lengths ``(B,)`` to
``{"logits": (B, K), "embedding": (B, D)}`` and passes its last frame-level representation
``(B, T', D)`` through a module named ``frames`` (an identity), so that frame-relation KD losses
(IUSP, SP, FitNets) tap ``frames`` in every architecture, whatever its time resolution T' and
width D. The clip embedding is the mean plus the max of the valid frames (PANNs' pooling).

Padding never changes a clip's outputs (in eval mode): the conv blocks zero the padded frames
before every convolution and after every pooling, and count valid frames as a clip alone would
(``floor(L / pool)``), so a clip in a padded batch gets the logits it gets alone. Without this,
a 3×3 convolution reads the batch's padding into the last valid frames and a teacher's outputs
depend on the batch it is in, which a teacher cache (outputs of each clip alone) cannot replay.
"""

from __future__ import annotations

import torch
from speechbrain.dataio.dataio import length_to_mask
from torch import nn

from kd_modules.losses.base import length_mask


class ConvBlock(nn.Sequential):
    """``convs`` × (3×3 conv, BatchNorm, ReLU), then average pooling by ``pool`` (time, freq);
    maps ``(B, in_ch, T, F)`` to ``(B, out_ch, T / pool[0], F / pool[1])``.

    Given each clip's valid frames ``counts`` ``(B,)``, it zeroes the padded frames on entry and
    after every ReLU (so the next convolution reads zeros past a clip's end, as its own zero
    padding would give it alone) and after pooling, where a clip keeps ``floor(count / pool)``
    frames (:meth:`pooled_counts`), as average pooling of the clip alone does.
    """

    def __init__(self, in_ch: int, out_ch: int, convs: int, pool: tuple[int, int]) -> None:
        layers: list[nn.Module] = []
        for index in range(convs):
            channels = in_ch if index == 0 else out_ch
            layers += [
                nn.Conv2d(channels, out_ch, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(),
            ]
        super().__init__(*layers, nn.AvgPool2d(pool))
        self.time_pool = pool[0]

    def pooled_counts(self, counts: torch.Tensor) -> torch.Tensor:
        """Valid frames ``(B,)`` after this block's time pooling (at least one)."""
        return torch.div(counts, self.time_pool, rounding_mode="floor").clamp(min=1)

    def forward(self, maps: torch.Tensor, counts: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C, T, F)`` -> ``(B, C', T', F')``; padded frames zeroed given ``counts``."""
        if counts is None:
            return super().forward(maps)
        counts = counts.to(maps.device)
        maps = zero_padding(maps, counts)
        for layer in self:
            maps = layer(maps)
            if isinstance(layer, nn.ReLU):
                maps = zero_padding(maps, counts)
        return zero_padding(maps, self.pooled_counts(counts))


def valid_frames(lens: torch.Tensor | None, frames: int, batch: int) -> torch.Tensor:
    """Number of valid frames ``(B,)`` (int64) of a ``frames``-long batch from relative ``lens``
    (all ``frames`` without ``lens``), as ``length_mask`` counts them."""
    if lens is None:
        return torch.full((batch,), frames, dtype=torch.long)
    return length_mask(lens, frames).sum(1)


def zero_padding(maps: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``maps`` ``(B, C, T, F)`` with the frames after each clip's ``counts`` ``(B,)`` zeroed."""
    return maps * length_to_mask(counts, maps.shape[2], dtype=maps.dtype)[:, None, :, None]


def mean_max_pool(frames: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mean + max over the first ``counts`` ``(B,)`` frames of ``(B, T, D)`` -> ``(B, D)``."""
    mask = length_to_mask(counts.to(frames.device), frames.shape[1], dtype=torch.bool).unsqueeze(-1)
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
                ConvBlock(i, o, convs_per_block, (p, 2))
                for i, o, p in zip(ins, channels, time_pools)
            )
        )
        self.frames = nn.Identity()
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels[-1], n_outputs))

    def forward(self, feats: torch.Tensor, lens: torch.Tensor | None = None) -> dict:
        """``(B, T, F)`` -> logits ``(B, K)`` and embedding ``(B, D)``."""
        counts = valid_frames(lens, feats.shape[1], feats.shape[0]).to(feats.device)
        maps = feats.unsqueeze(1)
        for block in self.blocks:
            maps, counts = block(maps, counts), block.pooled_counts(counts)  # (B, C, T', F')
        frames = self.frames(maps.mean(3).transpose(1, 2))  # (B, T', C)
        embedding = mean_max_pool(frames, counts)
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
        self.conv = ConvBlock(1, conv_channels, 1, (time_pool, freq_pool))
        self.lstm = nn.LSTM(conv_channels * (n_mels // freq_pool), hidden, batch_first=True)
        self.frames = nn.Identity()
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, n_outputs))

    def forward(self, feats: torch.Tensor, lens: torch.Tensor | None = None) -> dict:
        """``(B, T, F)`` -> logits ``(B, K)`` and embedding ``(B, H)``."""
        counts = valid_frames(lens, feats.shape[1], feats.shape[0]).to(feats.device)
        maps = self.conv(feats.unsqueeze(1), counts)  # (B, C, T', F')
        counts = self.conv.pooled_counts(counts)
        hidden, _ = self.lstm(maps.permute(0, 2, 1, 3).flatten(2))  # (B, T', H)
        frames = self.frames(hidden)
        embedding = mean_max_pool(frames, counts)
        return {"logits": self.head(embedding), "embedding": embedding}
