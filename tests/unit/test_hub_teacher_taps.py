"""The hub ECAPA's tap points by role (hparams/teacher/hub_ecapa.yaml) on a hub-format folder,
with an ECAPA student, on real FSDD clips: FitNets (hint), SP and IUSP (frames) and FRAMI-reuse's
pooling terms (pre, post) read the served layers and train the student through them."""

from __future__ import annotations

import torch
from conftest import SPEAKER_VERIFICATION
from hub_folders import DIGITS, real_clips, write_hub_folder
from speechbrain.lobes.features import Fbank
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
from speechbrain.processing.features import InputNormalization

from kd_modules.brains.distill import KDObjective
from kd_modules.hub.teacher import load_hub_teacher
from kd_modules.losses import IUSP, FitNetsHint, SimilarityPreserving
from kd_modules.models import SpeakerEmbeddingModel
from kd_modules.replay import FrontEnd
from kd_modules.taps import FeatureTaps

HUB_ECAPA = SPEAKER_VERIFICATION / "hparams" / "teacher" / "hub_ecapa.yaml"
ROLES = {"hint": "@hint", "frames": "@frames", "pre": "@pre", "post": "@post"}


def test_every_role_of_hub_ecapa_yaml_feeds_its_kd_term(tmp_path):
    write_hub_folder(tmp_path / "hub", DIGITS)  # C = 32: hint 32, frames 3C = 96, pooled 6C
    teacher = load_hub_teacher(
        tmp_path / "hub", tmp_path / "s", taps=ROLES, dataset_labels=DIGITS, teacher_yaml=HUB_ECAPA
    )
    torch.manual_seed(0)
    encoder = ECAPA_TDNN(80, channels=[16, 16, 16, 16, 48], attention_channels=8, lin_neurons=12)
    student = SpeakerEmbeddingModel(encoder, embedding_dim=12, n_speakers=10)
    paths = {"hint": "encoder.blocks.2#transpose", "frames": "encoder.mfa#transpose"}
    pooled = {"pre": "encoder.mfa#transpose", "post": "encoder.asp_bn#transpose"}
    student_taps = FeatureTaps(student, {**paths, **pooled})  # time-first, as hub_ecapa.yaml
    objective = KDObjective(
        {
            "fitnets": FitNetsHint("hint", 16, 32),
            "sp": SimilarityPreserving("frames"),
            "iusp": IUSP("frames"),
            "reuse_pre": FitNetsHint("pre", 48, 96),
            "reuse_post": FitNetsHint("post", 96, 192),
        },
        {"fitnets": 1.0, "sp": 1.0, "iusp": 1.0, "reuse_pre": 1.0, "reuse_post": 1.0},
    )
    wavs, lens = real_clips(3)
    front_end = FrontEnd(Fbank(n_mels=80), InputNormalization(norm_type="sentence", std_norm=False))
    feats, frame_lens = front_end.features_and_lengths(wavs, lens)
    student_out = {**student(feats, frame_lens), **student_taps.features}
    teacher_out = teacher(wavs, lens)
    assert teacher_out["hint"].shape[::2] == (3, 32) and teacher_out["frames"].shape[2] == 96
    assert teacher_out["post"].shape[::2] == (3, 192)
    assert teacher_out["frames"].shape[1] == student_out["frames"].shape[1]  # one frame grid
    terms = objective(student_out, teacher_out, frame_lens, None)
    assert all(torch.isfinite(value) and value > 0 for value in terms.values()), terms
    sum(terms.values()).backward()
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.blocks[2].parameters()
    )
