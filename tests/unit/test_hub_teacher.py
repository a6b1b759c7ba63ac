"""A SpeechBrain hub-format folder as the teacher (``--teacher_source``), on real FSDD clips.

The folder is written here in the exact layout of ``speechbrain/spkrec-ecapa-voxceleb`` (its
hyperparams.yaml with ``pretrainer`` and ``pretrained_path``, ``embedding_model.ckpt``,
``classifier.ckpt``, ``mean_var_norm_emb.ckpt``, ``label_encoder.txt``) with a small ECAPA-TDNN
of seeded random weights: loaded offline with every socket refused, it gives the outputs of the
same modules built by hand; its classes map onto the dataset's by name (a permuted label encoder
gives the same KD loss; a foreign class set is refused by a logit term naming the missing
classes and accepted by embedding KD).
"""

from __future__ import annotations

import socket

import pytest
import torch
from hub_folders import DIGITS, real_clips, write_hub_folder
from speechbrain.lobes.features import Fbank
from speechbrain.processing.features import InputNormalization

from kd_modules.hub.sources import TeacherSourceError, load_any_teacher, source_folder
from kd_modules.hub.teacher import UnmappedClassesError, check_logit_terms, load_hub_teacher
from kd_modules.losses import EmbeddingKD, HintonKD


@pytest.fixture
def no_network(monkeypatch):
    """Every socket connection refused: loading must not need the network."""
    attempts = []

    def refuse(self, address, *args):
        attempts.append(address)
        raise OSError(f"network disabled in this test (connect to {address})")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


def test_hub_folder_loads_offline_and_gives_the_modules_outputs(tmp_path, no_network):
    """Outputs of the loaded teacher == Fbank + sentence norm + ECAPA + classifier by hand."""
    ecapa, classifier = write_hub_folder(tmp_path / "hub", DIGITS)
    teacher = load_hub_teacher(tmp_path / "hub", dataset_labels=DIGITS, savedir=tmp_path / "s")
    wavs, lens = real_clips()
    got = teacher(wavs, lens)
    with torch.no_grad():
        feats = InputNormalization(norm_type="sentence", std_norm=False)(
            Fbank(n_mels=80)(wavs), lens
        )
        embedding = ecapa(feats, lens)
        cosine = classifier(embedding).squeeze(1)
    assert no_network == []
    assert torch.allclose(got["embedding"], embedding.squeeze(1), atol=1e-5)
    assert torch.allclose(got["cosine"], cosine, atol=1e-5)
    assert torch.allclose(got["logits"], 30.0 * cosine, atol=1e-4)
    assert got["embedding"].std() > 0 and cosine.abs().max() > 0.05  # not a degenerate model
    assert teacher.own_front_end and len(teacher.fingerprint) == 16
    assert teacher.record()["trust_teacher_code"] is False
    assert set(teacher.record()["sha256"]) == {
        "hyperparams.yaml",
        "embedding_model.ckpt",
        "classifier.ckpt",
        "mean_var_norm_emb.ckpt",
        "label_encoder.txt",
    }


def test_fingerprint_follows_the_files(tmp_path):
    """Another checkpoint in the folder is another teacher (another cache key)."""
    write_hub_folder(tmp_path / "a", DIGITS, seed=0)
    write_hub_folder(tmp_path / "b", DIGITS, seed=1)
    first = load_hub_teacher(tmp_path / "a", savedir=tmp_path / "sa")
    again = load_hub_teacher(tmp_path / "a", savedir=tmp_path / "sa2")
    other = load_hub_teacher(tmp_path / "b", savedir=tmp_path / "sb")
    assert first.fingerprint == again.fingerprint != other.fingerprint


def test_a_hub_id_offline_fails_in_one_line_saying_how_to_download(tmp_path, no_network):
    with pytest.raises(TeacherSourceError) as raised:
        source_folder("speechbrain/spkrec-ecapa-voxceleb", tmp_path)
    message = str(raised.value)
    assert "\n" not in message and "network" in message
    assert "huggingface-cli download speechbrain/spkrec-ecapa-voxceleb" in message
    assert "--teacher_source DIR" in message


def test_a_permuted_label_encoder_gives_the_same_kd_loss(tmp_path):
    """The same model stored with its classes in another order: mapped by name, same loss."""
    write_hub_folder(tmp_path / "plain", DIGITS)
    rows = [3, 7, 0, 9, 1, 5, 2, 8, 6, 4]
    write_hub_folder(tmp_path / "permuted", DIGITS, rows=rows)
    assert (tmp_path / "plain" / "label_encoder.txt").read_text() != (
        tmp_path / "permuted" / "label_encoder.txt"
    ).read_text()
    wavs, lens = real_clips()
    plain = load_hub_teacher(tmp_path / "plain", dataset_labels=DIGITS, savedir=tmp_path / "s1")
    permuted = load_hub_teacher(
        tmp_path / "permuted", dataset_labels=DIGITS, savedir=tmp_path / "s2"
    )
    assert permuted.class_map.index.tolist() == rows
    student = {"logits": torch.randn(wavs.shape[0], 10, generator=torch.Generator().manual_seed(0))}
    loss = HintonKD(tau=2.0)
    first = loss(student, plain(wavs, lens))
    second = loss(student, permuted(wavs, lens))
    assert torch.allclose(first, second, atol=1e-6) and first > 0


def test_a_foreign_class_set_is_refused_by_logit_kd_and_accepted_by_embedding_kd(tmp_path):
    foreign = ["dog_bark", "siren", *DIGITS[2:]]
    write_hub_folder(tmp_path / "hub", foreign)
    teacher = load_hub_teacher(tmp_path / "hub", dataset_labels=DIGITS, savedir=tmp_path / "s")
    with pytest.raises(UnmappedClassesError) as raised:
        check_logit_terms({"kd": HintonKD()}, teacher)
    message = str(raised.value)
    assert "\n" not in message and "'kd'" in message
    assert "'0', '1'" in message and "2 of the dataset's 10 classes" in message
    check_logit_terms({"embedding": EmbeddingKD(student_dim=16, teacher_dim=48)}, teacher)
    wavs, lens = real_clips(2)
    outputs = teacher(wavs, lens)
    assert "logits" not in outputs and outputs["embedding"].shape == (2, 48)
    term = EmbeddingKD(student_dim=16, teacher_dim=48, distance="cosine")
    assert term({"embedding": torch.randn(2, 16)}, outputs) > 0


def test_load_any_teacher_serves_the_source_and_refuses_a_foreign_logit_term(tmp_path):
    """The KD run's loader (hparams teacher_source, kd_losses, teacher_classes_file)."""
    write_hub_folder(tmp_path / "hub", ["cat", "dog", *DIGITS[2:]])
    classes = tmp_path / "labels.json"
    classes.write_text('["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]')
    hparams = {
        "teacher_source": str(tmp_path / "hub"),
        "teacher_taps": {},
        "trust_teacher_code": False,
        "teacher_classes_file": str(classes),
        "exp_root": str(tmp_path / "exp"),
        "kd_losses": {"kd": HintonKD()},
    }
    with pytest.raises(UnmappedClassesError, match="'0', '1'"):
        load_any_teacher(hparams)
    hparams["kd_losses"] = {"embedding": EmbeddingKD(student_dim=16, teacher_dim=48)}
    assert load_any_teacher(hparams).class_map.missing == ["0", "1"]


def test_the_folders_own_tap_points_and_logit_scale_come_first(tmp_path):
    """A folder written by tools/export_hub.py names its tap points and logit scale itself; they
    win over the recipe's hub_ecapa.yaml (whose scale 30 is the hub ECAPAs', not every model's)."""
    write_hub_folder(tmp_path / "hub", DIGITS)
    hyperparams = tmp_path / "hub" / "hyperparams.yaml"
    hyperparams.write_text(
        hyperparams.read_text()
        + "hub_tap_points:\n    frames: embedding_model.blocks.3\nhub_logit_scale: 1.0\n"
    )
    recipe_yaml = tmp_path / "hub_ecapa.yaml"
    recipe_yaml.write_text(
        "hub_tap_points:\n    frames: embedding_model.mfa\nhub_logit_scale: 30.0\n"
    )
    teacher = load_hub_teacher(
        tmp_path / "hub",
        savedir=tmp_path / "s",
        taps={"frames": "@frames"},
        dataset_labels=DIGITS,
        teacher_yaml=recipe_yaml,
    )
    wavs, lens = real_clips(2)
    outputs = teacher(wavs, lens)
    assert torch.equal(outputs["logits"], outputs["cosine"])
    assert outputs["frames"].shape[1] == 32  # blocks.3: C channels (the mfa has 3C = 96)
    bare = load_hub_teacher(
        tmp_path / "hub", savedir=tmp_path / "s2", taps={"frames": "@frames"}, dataset_labels=DIGITS
    )
    assert bare(wavs, lens)["frames"].shape[1] == 32
