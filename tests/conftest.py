"""Shared fixtures: real clips shipped in tests/samples and the larger set in ../shared/data."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "tests" / "samples"
SHARED_DATA = REPO.parent / "shared" / "data"
RECIPE = REPO / "recipes" / "sound_classification"
FSDD_CLIPS = SAMPLES / "fsdd" / "free-spoken-digit-dataset" / "recordings"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real datasets in their official layouts); skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is not available")
    return SHARED_DATA


@pytest.fixture(scope="session")
def recipe_train():
    """The sound-classification recipe's train.py module (dataio_prepare, main)."""
    sys.path.insert(0, str(RECIPE))
    import train

    return train


def write_fsdd_manifests(folder: Path, per_split: dict[str, int]) -> Path:
    """Train/valid/test manifests over the first clips of each digit (real FSDD recordings)."""
    clips = sorted(FSDD_CLIPS.glob("*.flac"))
    by_digit: dict[str, list[Path]] = {}
    for clip in clips:
        by_digit.setdefault(clip.stem.split("_")[0], []).append(clip)
    folder.mkdir(parents=True, exist_ok=True)
    offset = 0
    for split, count in per_split.items():
        entries = {}
        for digit, files in sorted(by_digit.items()):
            for clip in files[offset : offset + count]:
                entries[clip.stem] = {
                    "wav": str(clip),
                    "duration": sf.info(str(clip)).duration,
                    "label": digit,
                    "label_id": int(digit),
                    "group": clip.stem,
                }
        (folder / f"{split}.json").write_text(json.dumps(entries))
        offset += count
    return folder


@pytest.fixture
def fsdd_manifests(tmp_path: Path) -> Path:
    """A tiny real-audio classification task: 10 digits x (4 train, 1 valid, 1 test) clips."""
    return write_fsdd_manifests(tmp_path / "data", {"train": 4, "valid": 1, "test": 1})


AUDIO_TAGGING = REPO / "recipes" / "audio_tagging"
SPEAKER_VERIFICATION = REPO / "recipes" / "speaker_verification"


def load_module(name: str, path: Path):
    """Import a recipe script by path under a unique ``name`` (recipes' train.py / local/*.py
    would clash as top-level modules); its folder is on sys.path while it imports its siblings."""
    import importlib.util

    if name in sys.modules:
        return sys.modules[name]
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module
