"""Every recipe script imports as a module of its recipe's package (``recipes.<name>.<script>``,
``recipes.<name>.local.<script>``) with no path insert or loader trick, so tests and tools import
them by name and no two recipes' ``train`` modules clash."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
from conftest import REPO

RUN_OUTPUTS = {"exp", "data"}  # a recipe's run folders: SpeechBrain copies train.py into each run
SCRIPTS = sorted(
    path.relative_to(REPO).with_suffix("")
    for path in (REPO / "recipes").rglob("*.py")
    if path.name != "__init__.py" and path.relative_to(REPO).parts[2] not in RUN_OUTPUTS
)


@pytest.mark.parametrize("script", SCRIPTS, ids=str)
def test_recipe_script_imports_by_its_package_name(script: Path):
    path_before = list(sys.path)
    module = importlib.import_module(".".join(script.parts))
    assert Path(module.__file__) == REPO / script.with_suffix(".py")
    assert sys.path == path_before  # the module added no folder to the import path


def test_every_recipe_folder_is_a_package():
    folders = {script.parent for script in SCRIPTS}
    recipes = ("audio_tagging", "sound_classification", "speaker_verification")
    assert {folder.parts[:2] for folder in folders} == {("recipes", name) for name in recipes}
    assert all((REPO / folder / "__init__.py").is_file() for folder in folders | {Path("recipes")})
