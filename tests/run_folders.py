"""Tiny finished runs of any recipe's architecture, and real clips to score them on: what the
export tests (stage 9's and the hub format's) build a run folder from."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import REPO, SAMPLES
from hyperpyyaml import load_hyperpyyaml, resolve_references

from kd_modules.checkpoints import Checkpointer
from kd_modules.dataio import read_audio
from kd_modules.hparams import compose_yaml

FSDD = SAMPLES / "fsdd" / "free-spoken-digit-dataset" / "recordings"
ESC_CLIP = SAMPLES / "esc50" / "ESC-50-master" / "audio" / "4-183992-A-0.flac"
RATE = 16000
SIZE_KEYS = {  # each recipe's output-size key
    "sound_classification": "n_classes",
    "audio_tagging": "n_outputs",
    "speaker_verification": "n_speakers",
}


def recipe_files(recipe: str, arch: str) -> list[Path]:
    """The YAML files a recipe composes for ``arch`` (e.g. ``student/crnn``) trained alone."""
    hparams = REPO / "recipes" / recipe / "hparams"
    return [hparams / "common.yaml", hparams / f"{arch}.yaml", hparams / "kd" / "none.yaml"]


def run_overrides(tmp_path: Path, recipe: str, data_folder: Path, n_outputs: int) -> dict:
    """The overrides a run folder under ``tmp_path / "run"`` is composed with."""
    return {
        "data_folder": str(data_folder),
        "output_folder": str(tmp_path / "run"),
        SIZE_KEYS[recipe]: n_outputs,
    }


def finished_run(
    tmp_path: Path,
    recipe: str,
    arch: str,
    data_folder: Path,
    n_outputs: int,
    meta: dict[str, float],
) -> Path:
    """A run folder as training leaves it: the resolved hyperparams.yaml and a checkpoint (seeded
    weights) whose ``meta`` the best-checkpoint lookup selects by."""
    run = tmp_path / "run"
    run.mkdir()
    overrides = run_overrides(tmp_path, recipe, data_folder, n_outputs)
    text = resolve_references(compose_yaml(recipe_files(recipe, arch)), overrides).getvalue()
    (run / "hyperparams.yaml").write_text(text)
    torch.manual_seed(0)
    model = load_hyperpyyaml(text)["model"]
    Checkpointer(run / "save", recoverables={"model": model}).save_checkpoint(meta=meta)
    return run


def real_clips() -> list[torch.Tensor]:
    """Real clips of four lengths, off the 160-sample hop grid: three FSDD digits and an ESC-50
    dog bark."""
    digits = [read_audio(path, RATE) for path in sorted(FSDD.glob("*.flac"))[:3]]
    return [digits[0], digits[1][:7322], digits[2][:4801], read_audio(ESC_CLIP, RATE)[:12017]]
