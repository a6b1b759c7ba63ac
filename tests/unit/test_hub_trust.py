"""A foreign teacher is untrusted input (kd_modules.hub.trust): a hub hyperparams.yaml that names
code outside the allow-list is refused before anything of it is built (the payload's file is never
created, while HyperPyYAML itself would create it), names are judged where they really live, an
include is followed, a hub-style file passes and trusting it accepts anything; a pickled checkpoint
with a payload is refused by our loader and by SpeechBrain's Pretrainer without running.
"""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml
from safetensors.torch import save_file
from speechbrain.utils.parameter_transfer import Pretrainer

from kd_modules.hparams import OneLineError
from kd_modules.hub.trust import (
    TeacherCodeRefused,
    UntrustedCheckpoint,
    check_hyperparams,
    check_teacher_folder,
    hash_files,
    load_checkpoint,
)

# The layout of speechbrain/spkrec-ecapa-voxceleb's hyperparams.yaml, shortened.
HUB_YAML = """\
n_mels: 80
compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: !ref <n_mels>
mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    norm_type: sentence
    std_norm: False
embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
    input_size: !ref <n_mels>
    channels: [8, 8, 8, 8, 24]
    lin_neurons: 16
classifier: !new:speechbrain.lobes.models.ECAPA_TDNN.Classifier
    input_size: 16
    out_neurons: 3
label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder
activation: !new:torch.nn.Identity
modules:
    compute_features: !ref <compute_features>
    mean_var_norm: !ref <mean_var_norm>
    embedding_model: !ref <embedding_model>
    classifier: !ref <classifier>
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        embedding_model: !ref <embedding_model>
    paths:
        embedding_model: embedding_model.ckpt
"""


class Payload:
    """Unpickling this calls ``open(path, "w")``: the file's existence proves the payload ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def touch_yaml(folder: Path, marker: Path) -> Path:
    """A hyperparams.yaml whose ``!apply:os.system`` would create ``marker``."""
    path = folder / "hyperparams.yaml"
    command = f"touch {shlex.quote(str(marker))}"
    path.write_text(f"n_mels: 80\nhook: !apply:os.system [{command!r}]\n")
    return path


def test_os_system_is_refused_before_it_runs_and_would_run_otherwise(tmp_path):
    marker = tmp_path / "ran"
    path = touch_yaml(tmp_path, marker)
    with pytest.raises(TeacherCodeRefused) as refused:
        check_hyperparams(path, trust_code=False)
    message = str(refused.value)
    assert "\n" not in message and isinstance(refused.value, OneLineError)
    assert str(path) in message and "!apply:os.system" in message
    assert "--trust_teacher_code true" in message
    assert not marker.exists()
    # The payload is real: HyperPyYAML, which loading a teacher calls, does run it.
    with path.open() as stream:
        load_hyperpyyaml(stream)
    assert marker.exists()


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("f: !name:builtins.eval", "!name:builtins.eval"),
        ("f: !!python/object/apply:os.system ['true']", "!!python/object/apply:os.system"),
        ("f: !name:speechbrain.os.system", "posix.system"),  # os as speechbrain's attribute
        ("f: !apply:torch.hub.load ['a/b', 'c']", "!apply:torch.hub.load"),
        ("f: !name:torch.nn.modules.module.torch.load", "torch.serialization.load"),
        ("f: !name:speechbrain.utils.fetching.fetch", "can download"),
        ("f: !name:speechbrain.inference.EncoderClassifier.from_hparams", "can download"),
        ("f: !name:torch.nn.Module.__subclasses__", "dunder"),
        ("f: !module:os", "!module:os"),
        ("f: !applyref:subprocess.run ['true']", "!applyref:subprocess.run"),
    ],
)
def test_callables_outside_the_allow_list_are_refused(tmp_path, line, named):
    path = tmp_path / "hyperparams.yaml"
    path.write_text(f"a: 1\n{line}\n")
    with pytest.raises(TeacherCodeRefused, match=r"hyperparams\.yaml:2: ") as refused:
        check_hyperparams(path, trust_code=False)
    assert named in str(refused.value)


def test_an_include_is_checked_like_the_file(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "inner").mkdir()
    inner = touch_yaml(tmp_path / "inner", marker)
    outer = tmp_path / "hyperparams.yaml"
    outer.write_text("a: 1\nsub: !include:inner/hyperparams.yaml\n")
    with pytest.raises(TeacherCodeRefused) as refused:
        check_hyperparams(outer, trust_code=False)
    assert str(inner) in str(refused.value) and not marker.exists()


def test_a_hub_style_file_passes_and_reports_its_callables(tmp_path):
    path = tmp_path / "hyperparams.yaml"
    path.write_text(HUB_YAML)
    assert check_hyperparams(path, trust_code=False) == [
        "!new:speechbrain.dataio.encoder.CategoricalEncoder",
        "!new:speechbrain.lobes.features.Fbank",
        "!new:speechbrain.lobes.models.ECAPA_TDNN.Classifier",
        "!new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN",
        "!new:speechbrain.processing.features.InputNormalization",
        "!new:speechbrain.utils.parameter_transfer.Pretrainer",
        "!new:torch.nn.Identity",
    ]


def test_trusting_the_code_accepts_and_records_it(tmp_path):
    path = touch_yaml(tmp_path, tmp_path / "ran")
    assert check_hyperparams(path, trust_code=True) == ["!apply:os.system"]
    assert not (tmp_path / "ran").exists()  # checking never runs it, trusted or not


def pickled_payload(path: Path, marker: Path) -> Path:
    """A ``.ckpt`` that looks like a state dict but runs ``open(marker, "w")`` when unpickled."""
    torch.save({"weight": torch.zeros(2, 2), "extra": Payload(marker)}, path)
    return path


def test_a_pickled_payload_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"
    ckpt = pickled_payload(tmp_path / "embedding_model.ckpt", marker)
    with pytest.raises(UntrustedCheckpoint) as refused:
        load_checkpoint(ckpt)
    assert str(ckpt) in str(refused.value) and "GLOBAL io.open" in str(refused.value)
    assert "\n" not in str(refused.value) and not marker.exists()
    torch.load(ckpt, weights_only=False)  # the payload is real
    assert marker.exists()


def test_plain_checkpoints_load(tmp_path):
    state = {"weight": torch.arange(6.0).reshape(2, 3), "count": 3}
    torch.save(state, tmp_path / "a.ckpt")
    save_file({"weight": state["weight"]}, tmp_path / "b.safetensors")
    loaded = load_checkpoint(tmp_path / "a.ckpt")
    assert loaded["count"] == 3 and torch.equal(loaded["weight"], state["weight"])
    assert torch.equal(load_checkpoint(tmp_path / "b.safetensors")["weight"], state["weight"])


def test_speechbrains_pretrainer_refuses_the_payload_too(tmp_path):
    """SpeechBrain 1.1.2's Pretrainer calls torch.load without weights_only: torch 2.11's default
    (True) is what keeps the payload from running."""
    marker = tmp_path / "ran"
    ckpt = pickled_payload(tmp_path / "model.ckpt", marker)
    pretrainer = Pretrainer(
        collect_in=tmp_path / "collected",
        loadables={"model": torch.nn.Linear(2, 2)},
        paths={"model": str(ckpt)},
    )
    pretrainer.collect_files()
    with pytest.raises(Exception, match="Weights only load failed"):
        pretrainer.load_collected()
    assert not marker.exists()


def test_the_folder_check_refuses_a_payload_and_the_unsafe_environment(tmp_path, monkeypatch):
    (tmp_path / "hyperparams.yaml").write_text(HUB_YAML)
    torch.save({"weight": torch.zeros(2)}, tmp_path / "embedding_model.ckpt")
    record = check_teacher_folder(tmp_path, trust_code=False)
    assert record["trust_teacher_code"] is False and record["source"] == str(tmp_path.resolve())
    assert set(record["sha256"]) == {"hyperparams.yaml", "embedding_model.ckpt"}
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(UntrustedCheckpoint, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
        check_teacher_folder(tmp_path, trust_code=False)
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    marker = tmp_path / "ran"
    ckpt = pickled_payload(tmp_path / "classifier.ckpt", marker)
    with pytest.raises(UntrustedCheckpoint, match=str(ckpt)):
        check_teacher_folder(tmp_path, trust_code=False)
    assert not marker.exists()


def test_hash_files_are_the_sha256_of_every_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_bytes(b"alpha")
    (tmp_path / "sub" / "b.ckpt").write_bytes(b"beta")
    assert hash_files(tmp_path) == {
        "a.txt": hashlib.sha256(b"alpha").hexdigest(),
        "sub/b.ckpt": hashlib.sha256(b"beta").hexdigest(),
    }
