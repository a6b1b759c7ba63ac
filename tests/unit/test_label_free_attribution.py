"""IML-KD's label-free attribution target (``attribution_score: utterance_cosine``), on real FSDD
clips through an ECAPA teacher: integrated gradients of the cosine of each segment's embedding
with the whole utterance's, without the teacher's classifier or the clips' labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hub_folders import real_clips
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

from kd_modules.attribution import IntegratedInput
from kd_modules.models import SpeakerEmbeddingModel
from kd_modules.replay import FrontEnd
from kd_modules.teacher import IntegratedTeacher, Teacher


def fbank_teacher() -> tuple[IntegratedTeacher, IntegratedTeacher, torch.Tensor, torch.Tensor]:
    """A seeded tiny ECAPA teacher as IML-KD's, label-free and on the true-class cosine, with
    the features ``(B, T, 40)`` and frame lengths of three real clips."""
    from speechbrain.lobes.features import Fbank
    from speechbrain.processing.features import InputNormalization

    torch.manual_seed(0)
    encoder = ECAPA_TDNN(40, channels=[16, 16, 16, 16, 48], attention_channels=8, lin_neurons=12)
    model = SpeakerEmbeddingModel(encoder, embedding_dim=12, n_speakers=5)
    teacher = Teacher(model)
    front_end = FrontEnd(Fbank(n_mels=40), InputNormalization(norm_type="sentence", std_norm=False))
    wavs, lens = real_clips(3)
    feats, frame_lens = front_end.features_and_lengths(wavs, lens)
    integrated = IntegratedInput(durations_s=(0.2, 0.4), steps=4)
    label_free = IntegratedTeacher(teacher, integrated, score_key="utterance_cosine")
    true_class = IntegratedTeacher(teacher, integrated, score_key="cosine")
    return label_free, true_class, feats, frame_lens


def test_label_free_maps_are_integrated_gradients_of_the_utterance_cosine():
    label_free, true_class, feats, lens = fbank_teacher()
    model = label_free.model
    with torch.no_grad():
        whole = model(feats, lens)["embedding"]

    def reference(x, rows):
        emb = model(x, torch.ones(x.shape[0]))["embedding"]
        return F.cosine_similarity(emb, whole[rows], dim=1)

    with torch.enable_grad():
        expected = label_free.integrated.maps(reference, feats, lens)
    got = label_free.maps(feats, lens, targets=None)
    assert all(torch.allclose(g, e, atol=1e-6) for g, e in zip(got, expected))
    assert all(g.abs().sum() > 0 for g in got)
    by_class = true_class.maps(feats, lens, torch.tensor([0, 1, 2]))
    assert not torch.allclose(by_class[0], got[0])  # another target than the true-class score


def test_label_free_teacher_needs_no_labels_and_keys_its_own_cache():
    label_free, true_class, feats, lens = fbank_teacher()
    outputs = label_free(feats, lens)  # no targets
    assert outputs["ig_weight"].shape == feats.shape and outputs["ig_weight"].max() > 0
    again = label_free(feats, lens, torch.tensor([4, 3, 2]))  # labels, when given, are ignored
    assert torch.equal(outputs["ig_weight"], again["ig_weight"])
    assert label_free.fingerprint != true_class.fingerprint


def test_maps_are_float32_integrated_gradients_under_a_callers_fp16_autocast():
    """A live IML-KD run with --precision fp16 computes the maps inside the Brain's autocast:
    they must be the float32 maps (fp16 ECAPA pooling gave NaN maps)."""
    label_free, true_class, feats, lens = fbank_teacher()
    targets = torch.tensor([0, 1, 2])
    for teacher in (label_free, true_class):
        expected = teacher.maps(feats, lens, targets)
        with torch.autocast("cpu", dtype=torch.float16):
            got = teacher.maps(feats, lens, targets)
        assert all(g.dtype == torch.float32 and torch.equal(g, e) for g, e in zip(got, expected))
