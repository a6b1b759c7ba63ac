"""Our runs in SpeechBrain's hub format (kd_modules.hub.export, tools/export_hub.py): a finished run
of every recipe, teacher or student, exported and loaded back through SpeechBrain's own
``EncoderClassifier.from_hparams`` with every socket connection refused gives the recipe's own
embeddings and logits on real clips (1e-5) and names the classes; the written hyperparams pass
our trust check; a moved copy loads with ``pretrained_path`` overridden (without it SpeechBrain
takes the gone folder for a hub id); runs without class names are refused in one line.

The runs are built as tests/unit/test_export.py builds them: the recipe's resolved YAML and a
checkpoint of its freshly initialised model, as training leaves a run folder.
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import run_folders
import torch
from conftest import REPO
from hyperpyyaml import load_hyperpyyaml
from run_folders import real_clips
from speechbrain.inference.classifiers import EncoderClassifier

from kd_modules.export.run import load_run
from kd_modules.hparams import OneLineError
from kd_modules.hub.export import HubExportError, export_hub
from kd_modules.hub.teacher import load_hub_teacher
from kd_modules.hub.trust import check_hyperparams
from tools.export_hub import main as export_hub_main

RUNS = [
    ("sound_classification", "student/xvector_small"),
    ("sound_classification", "teacher/ensemble"),
    ("audio_tagging", "student/crnn"),
    ("speaker_verification", "teacher/ecapa_tiny"),
]
FINE, COARSE = ["1-1_small-engine", "1-2_medium-engine", "2-1_rock-drill"], ["1_engine", "2_drill"]


class NetworkUsed(OSError):
    """Raised by the socket guard: something tried to open a connection."""


@pytest.fixture
def network_attempts(monkeypatch) -> list:
    """Every socket connection and name lookup raises :class:`NetworkUsed` and is recorded in
    the returned list (a library that swallows the error still leaves its attempt there)."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise NetworkUsed(f"network use attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def test_the_socket_guard_sees_a_connection(network_attempts):
    with pytest.raises(NetworkUsed):
        socket.create_connection(("127.0.0.1", 9), timeout=1)
    assert network_attempts


def write_class_names(recipe: str, data_folder: Path) -> list[str]:
    """The class-name file where the recipe's stage 1 writes it; the names in output order."""
    if recipe == "audio_tagging":
        data_folder.mkdir(parents=True)
        (data_folder / "labels.json").write_text(json.dumps({"fine": FINE, "coarse": COARSE}))
        return FINE + COARSE
    if recipe == "speaker_verification":
        data_folder.mkdir(parents=True)
        names = ["19", "26", "103", "1034", "1040"]
        (data_folder / "speakers.json").write_text(json.dumps(names))
        return names
    data_folder.mkdir(parents=True)  # data/<dataset>/fold1: labels.json one folder up
    names = ["air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling"]
    (data_folder.parent / "labels.json").write_text(json.dumps(names))
    return names


def finished_run(tmp_path: Path, recipe: str, arch: str) -> Path:
    """A seeded run of ``arch`` (5 classes), its data folder where write_class_names writes."""
    meta = {"accuracy": 1.0, "coarse_micro_auprc": 1.0, "eer": 1.0}
    return run_folders.finished_run(tmp_path, recipe, arch, tmp_path / "data/set/fold1", 5, meta)


def recipe_outputs(run: Path, wavs: torch.Tensor) -> dict:
    """The run's own pipeline (its front end and best checkpoint) on a batch, seeded as the hub
    side is (statistics pooling adds noise to its mean)."""
    hparams, _ = load_run(run)
    model = hparams["model"].eval()
    with torch.no_grad():
        feats, lens = hparams["front_end"].features_and_lengths(wavs, torch.ones(len(wavs)))
        torch.manual_seed(7)
        return model(feats, lens)


def hub_outputs(hub: EncoderClassifier, wavs: torch.Tensor) -> tuple:
    """``(embedding (B, E), logits (B, C), class names)`` of the loaded hub folder (logits: its
    classifier's scores times ``hub_logit_scale``)."""
    with torch.no_grad():
        torch.manual_seed(7)
        embedding = hub.encode_batch(wavs).squeeze(1)
        torch.manual_seed(7)
        scores, _, _, names = hub.classify_batch(wavs)
    return embedding, hub.hparams.hub_logit_scale * scores, names


@pytest.mark.parametrize("recipe, arch", RUNS)
def test_exported_run_loads_offline_with_the_recipes_outputs(
    tmp_path, network_attempts, recipe, arch
):
    run = finished_run(tmp_path, recipe, arch)
    names = write_class_names(recipe, tmp_path / "data" / "set" / "fold1")
    out = tmp_path / "hub"
    record = export_hub(run, out)
    assert record["classes"] == len(names)
    assert check_hyperparams(out / "hyperparams.yaml", trust_code=False) == record["callables"]

    hub = EncoderClassifier.from_hparams(source=str(out), savedir=str(tmp_path / "savedir"))
    for clip in real_clips():
        ours = recipe_outputs(run, clip[None])
        embedding, logits, labels = hub_outputs(hub, clip[None])
        torch.testing.assert_close(embedding, ours["embedding"], atol=1e-5, rtol=0)
        torch.testing.assert_close(logits, ours["logits"], atol=1e-5, rtol=0)
        assert labels == [names[int(ours["logits"].argmax())]]
    batch = torch.stack([clip[:4801] for clip in real_clips()])  # one length: nothing padded
    embedding, logits, _ = hub_outputs(hub, batch)
    ours = recipe_outputs(run, batch)
    torch.testing.assert_close(embedding, ours["embedding"], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, ours["logits"], atol=1e-5, rtol=0)
    assert network_attempts == []


def test_an_exported_ecapa_teacher_serves_its_outputs_and_taps_through_hub_ecapa_yaml(
    tmp_path, network_attempts
):
    """The speaker layout is the hub ECAPA's: loaded as a --teacher_source teacher with the
    recipe's hparams/teacher/hub_ecapa.yaml (its tap points and logit scale), it gives the run's
    embedding, logits (speakers permuted by name) and tapped layers on real clips."""
    run = finished_run(tmp_path, "speaker_verification", "teacher/ecapa_tiny")
    names = write_class_names("speaker_verification", tmp_path / "data" / "set" / "fold1")
    export_hub(run, tmp_path / "hub")
    hub_ecapa = REPO / "recipes/speaker_verification/hparams/teacher/hub_ecapa.yaml"
    written = load_hyperpyyaml((tmp_path / "hub" / "hyperparams.yaml").read_text())
    declared = load_hyperpyyaml(hub_ecapa.read_text())
    assert written["hub_tap_points"] == declared["hub_tap_points"]
    assert written["hub_logit_scale"] == declared["hub_logit_scale"] == 30.0
    teacher = load_hub_teacher(
        tmp_path / "hub",
        tmp_path / "savedir",
        taps={"hint": "@hint", "post": "@post"},
        dataset_labels=names[::-1],
        teacher_yaml=hub_ecapa,
    )
    hparams, _ = load_run(run)
    model = hparams["model"].eval()
    hints = []
    model.encoder.blocks[2].register_forward_hook(lambda module, args, out: hints.append(out))
    for clip in real_clips():
        served = teacher(clip[None], torch.ones(1))
        with torch.no_grad():
            feats, lens = hparams["front_end"].features_and_lengths(clip[None], torch.ones(1))
            ours = model(feats, lens)
        hint = hints.pop()
        torch.testing.assert_close(served["embedding"], ours["embedding"], atol=1e-5, rtol=0)
        torch.testing.assert_close(served["logits"], ours["logits"].flip(-1), atol=1e-4, rtol=0)
        # hub_ecapa.yaml taps time-first (#transpose), as every ECAPA YAML of the recipe
        torch.testing.assert_close(served["hint"], hint.transpose(1, 2), atol=1e-5, rtol=0)
        assert served["post"].shape[2] == 6 * 64
    assert network_attempts == []


def test_the_tool_writes_a_copy_that_loads_with_its_path_overridden(
    tmp_path, network_attempts, capsys
):
    run = finished_run(tmp_path, "sound_classification", "student/xvector_small")
    labels = tmp_path / "names.json"
    names = [f"digit_{k}" for k in range(5)]
    labels.write_text(json.dumps(names))
    export_hub_main(["--run", str(run), "--out", str(tmp_path / "hub"), "--labels", str(labels)])
    assert json.loads(capsys.readouterr().out)["classes"] == 5
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "hub", moved)
    clip = real_clips()[0][None]
    # pretrained_path names a folder that is gone: SpeechBrain takes it for a hub id (SpeechBrain
    # issues #1253, #2699), which huggingface_hub refuses as a repo id before any connection.
    with pytest.raises(ValueError, match="Repo id must be"):
        EncoderClassifier.from_hparams(source=str(moved), savedir=str(tmp_path / "save1"))
    hub = EncoderClassifier.from_hparams(
        source=str(moved),
        savedir=str(tmp_path / "save2"),
        overrides={"pretrained_path": str(moved)},
    )
    embedding, logits, labels = hub_outputs(hub, clip)
    ours = recipe_outputs(run, clip)
    torch.testing.assert_close(embedding, ours["embedding"], atol=1e-5, rtol=0)
    assert labels == [names[int(ours["logits"].argmax())]]
    assert network_attempts == []


def test_a_run_without_class_names_is_refused_in_one_line(tmp_path):
    run = finished_run(tmp_path, "sound_classification", "student/xvector_small")
    with pytest.raises(HubExportError, match=r"pass --labels FILE") as refused:
        export_hub(run, tmp_path / "hub")
    assert isinstance(refused.value, OneLineError) and "\n" not in str(refused.value)
    wrong = tmp_path / "three.json"
    wrong.write_text(json.dumps(["a", "b", "c"]))
    with pytest.raises(HubExportError, match="5 outputs but the class names are 3"):
        export_hub(run, tmp_path / "hub", labels_file=wrong)
    assert not (tmp_path / "hub" / "hyperparams.yaml").exists()
    with pytest.raises(HubExportError, match="hyperparams.yaml is missing"):
        export_hub(tmp_path / "no_run", tmp_path / "hub")
