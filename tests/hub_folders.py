"""Hub-format teacher folders for the tests, in the exact layout of
``speechbrain/spkrec-ecapa-voxceleb`` (its hyperparams.yaml with ``pretrainer`` and
``pretrained_path``, ``embedding_model.ckpt``, ``classifier.ckpt``, ``mean_var_norm_emb.ckpt``,
``label_encoder.txt``) around a small ECAPA-TDNN of seeded random weights; real FSDD clips as a
padded batch."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import FSDD_CLIPS
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN, Classifier
from speechbrain.processing.features import InputNormalization

from kd_modules.dataio import read_audio

DIGITS = [str(d) for d in range(10)]
CHANNELS = [32, 32, 32, 32, 96]
HYPERPARAMS = """\
# ############################################################################
# Model: ECAPA big for Speaker verification (speechbrain/spkrec-ecapa-voxceleb's layout)
# ############################################################################

# Feature parameters
n_mels: 80

# Pretrain folder (HuggingFace)
pretrained_path: speechbrain/spkrec-ecapa-voxceleb

# Output parameters
out_n_neurons: {n_classes}

# Model params
compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: !ref <n_mels>

mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    norm_type: sentence
    std_norm: False

embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
    input_size: !ref <n_mels>
    channels: {channels}
    kernel_sizes: [5, 3, 3, 3, 1]
    dilations: [1, 2, 3, 4, 1]
    attention_channels: 16
    se_channels: 16
    lin_neurons: {embedding_dim}

classifier: !new:speechbrain.lobes.models.ECAPA_TDNN.Classifier
    input_size: {embedding_dim}
    out_neurons: !ref <out_n_neurons>

mean_var_norm_emb: !new:speechbrain.processing.features.InputNormalization
    norm_type: global
    std_norm: False

modules:
    compute_features: !ref <compute_features>
    mean_var_norm: !ref <mean_var_norm>
    embedding_model: !ref <embedding_model>
    mean_var_norm_emb: !ref <mean_var_norm_emb>
    classifier: !ref <classifier>

label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder

pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        embedding_model: !ref <embedding_model>
        mean_var_norm_emb: !ref <mean_var_norm_emb>
        classifier: !ref <classifier>
        label_encoder: !ref <label_encoder>
    paths:
        embedding_model: !ref <pretrained_path>/embedding_model.ckpt
        mean_var_norm_emb: !ref <pretrained_path>/mean_var_norm_emb.ckpt
        classifier: !ref <pretrained_path>/classifier.ckpt
        label_encoder: !ref <pretrained_path>/label_encoder.txt
"""


def hub_modules(
    n_classes: int, seed: int = 0, embedding_dim: int = 48
) -> tuple[ECAPA_TDNN, Classifier]:
    """The embedding model and classifier of HYPERPARAMS, seeded random weights (eval mode)."""
    torch.manual_seed(seed)
    ecapa = ECAPA_TDNN(
        80,
        channels=CHANNELS,
        kernel_sizes=[5, 3, 3, 3, 1],
        dilations=[1, 2, 3, 4, 1],
        attention_channels=16,
        se_channels=16,
        lin_neurons=embedding_dim,
    )
    classifier = Classifier(embedding_dim, out_neurons=n_classes)
    with torch.no_grad():  # non-trivial running statistics, as a trained model has
        for module in ecapa.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return ecapa.eval(), classifier.eval()


def write_hub_folder(
    folder: Path,
    labels: list[str],
    rows: list[int] | None = None,
    seed: int = 0,
    embedding_dim: int = 48,
) -> tuple[ECAPA_TDNN, Classifier]:
    """A hub-format folder of the seeded model whose classifier row ``rows[i]`` scores
    ``labels[i]`` (default: row i); returns the modules as built (the classifier's rows in
    ``labels``' order)."""
    folder.mkdir(parents=True, exist_ok=True)
    ecapa, classifier = hub_modules(len(labels), seed, embedding_dim)
    rows = list(range(len(labels))) if rows is None else rows
    (folder / "hyperparams.yaml").write_text(
        HYPERPARAMS.format(n_classes=len(labels), channels=CHANNELS, embedding_dim=embedding_dim)
    )
    torch.save(ecapa.state_dict(), folder / "embedding_model.ckpt")
    stored = Classifier(embedding_dim, out_neurons=len(labels))
    weight = torch.empty_like(classifier.weight)
    weight[torch.tensor(rows)] = classifier.weight.detach()
    stored.load_state_dict({"weight": weight})
    torch.save(stored.state_dict(), folder / "classifier.ckpt")
    norm = InputNormalization(norm_type="global", std_norm=False)
    norm._save(folder / "mean_var_norm_emb.ckpt")
    encoder = CategoricalEncoder()
    by_row = sorted(range(len(labels)), key=lambda i: rows[i])
    encoder.update_from_iterable([labels[i] for i in by_row])
    encoder.save(folder / "label_encoder.txt")
    return ecapa, classifier


def real_clips(count: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` FSDD recordings as a padded batch ``(B, S)`` and their relative lengths."""
    waves = [read_audio(path) for path in sorted(FSDD_CLIPS.glob("*.flac"))[:count]]
    longest = max(wave.numel() for wave in waves)
    batch = torch.zeros(len(waves), longest)
    for row, wave in enumerate(waves):
        batch[row, : wave.numel()] = wave
    return batch, torch.tensor([wave.numel() / longest for wave in waves])
