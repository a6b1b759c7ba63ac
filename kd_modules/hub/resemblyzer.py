"""Resemblyzer's pretrained GE2E speaker encoder as a frozen teacher (``--teacher_source
resemblyzer``), read from the installed wheel without importing it.

``pip install resemblyzer==0.1.4`` (setup.py's ``pretrained`` extra) ships ``pretrained.pt``
(Apache-2.0) beside its code; importing the package would import webrtcvad and librosa, so the
file is located with ``importlib.util.find_spec`` (which reads no module) and loaded
weights-only. The teacher takes waveforms through its own front end
(:class:`kd_modules.models.ge2e.GE2EFrontEnd`, the package's 40-band mel power spectrogram) while
the student keeps its features, and its fingerprint is the weights file's SHA-256 with the
front end's settings.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from pathlib import Path

import torch
import yaml

from kd_modules.hparams import OneLineError
from kd_modules.models.ge2e import GE2E, GE2EFrontEnd, GE2EOnWaveforms
from kd_modules.teacher import Teacher, resolve_tap_points

logger = logging.getLogger(__name__)

PACKAGE, WEIGHTS = "resemblyzer", "pretrained.pt"
SKIPPED_KEYS = ("similarity_weight", "similarity_bias")  # the GE2E loss's scale, not the network


class ResemblyzerMissing(OneLineError, FileNotFoundError):
    """``--teacher_source resemblyzer`` without the package (or its weights) installed."""


def pretrained_file() -> Path:
    """The installed package's ``pretrained.pt``, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        if (Path(folder) / WEIGHTS).is_file():
            return Path(folder) / WEIGHTS
    raise ResemblyzerMissing(
        f"--teacher_source resemblyzer: no {PACKAGE}/{WEIGHTS} installed "
        f"(pip install 'resemblyzer==0.1.4', or pip install -e '.[pretrained]')"
    )


def sha256(path: Path) -> str:
    """The file's SHA-256 (hex)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_ge2e(weights: Path, partial_frames: int | None = 160) -> GE2E:
    """A :class:`GE2E` with the package's weights (loaded weights-only; every key must match)."""
    state = torch.load(weights, map_location="cpu", weights_only=True)["model_state"]
    model = GE2E(partial_frames=partial_frames)
    model.load_state_dict({k: v for k, v in state.items() if k not in SKIPPED_KEYS})
    return model


class ResemblyzerTeacher(Teacher):
    """The pretrained GE2E as a :class:`~kd_modules.teacher.Teacher` on its own front end.

    Called as ``teacher(wavs, lens)`` with the view's waveforms ``(B, S)`` and relative lengths;
    it has no classifier (no ``logits``): embedding and feature KD terms only.
    """

    own_front_end = True

    def __init__(self, model: GE2EOnWaveforms, taps: dict[str, str], weights: Path) -> None:
        super().__init__(model, taps)
        self.source, self.file_hashes = PACKAGE, {WEIGHTS: sha256(weights)}
        settings = json.dumps(self.front_end_settings, sort_keys=True)
        digest = hashlib.sha256(f"{self.file_hashes[WEIGHTS]}:{settings}".encode())
        self.fingerprint = digest.hexdigest()[:16]
        self.checkpoint = str(weights)

    @property
    def front_end_settings(self) -> dict:
        """What changes the teacher's inputs and outputs: its front end and its partials."""
        encoder = self.model.encoder
        partials = {"frames": encoder.partial_frames, "step": encoder.frame_step}
        return {**self.model.front_end.settings(), "partials": partials}

    def record(self) -> dict:
        """The run record's teacher entry: source, the weights' SHA-256, fingerprint."""
        return {
            "source": self.source,
            "files": dict(self.file_hashes),
            "trust_teacher_code": False,  # weights only: no code of the package runs
            "fingerprint": self.fingerprint,
        }


def read_tap_points(yaml_file: str | Path | None) -> dict[str, str]:
    """``hub_tap_points`` (role -> path inside :class:`GE2EOnWaveforms`) of a teacher YAML."""
    if not yaml_file:
        return {}
    document = yaml.safe_load(Path(yaml_file).read_text()) or {}
    return dict(document.get("hub_tap_points") or {})


def load_resemblyzer_teacher(hparams: dict) -> ResemblyzerTeacher:
    """``--teacher_source resemblyzer``: hparams ``teacher_taps`` (``@role`` resolved through
    ``teacher_source_yaml``'s ``hub_tap_points``), ``ge2e_partial_frames`` (160: the package's
    ``embed_utterance``; None: whole utterances) and ``ge2e_normalize_dbfs`` (-30)."""
    weights = pretrained_file()
    front_end = GE2EFrontEnd(normalize_dbfs=hparams.get("ge2e_normalize_dbfs", -30.0))
    encoder = load_ge2e(weights, hparams.get("ge2e_partial_frames", 160))
    tap_points = read_tap_points(hparams.get("teacher_source_yaml"))
    taps = resolve_tap_points(hparams.get("teacher_taps"), tap_points, weights.parent)
    logger.info("Teacher: Resemblyzer's GE2E from %s", weights)
    return ResemblyzerTeacher(GE2EOnWaveforms(front_end, encoder), taps, weights)
