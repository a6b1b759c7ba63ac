"""The import contract (``.importlinter``, run by ``make lint``): the tree keeps it, and it breaks
on the circle kd_modules had before its rooms were split (``results`` <-> ``experiment``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` run in ``root`` (a checkout with its ``.importlinter``), without cache."""
    if not LINT_IMPORTS.is_file():
        pytest.fail(f"{LINT_IMPORTS} is missing: install the dev extra (pip install -e '.[dev]')")
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True, text=True, check=False
    )


def copy_sources(target: Path) -> Path:
    """The Python files of kd_modules, recipes and tools, and the contract, under ``target``."""
    skipped = shutil.ignore_patterns("*.pyc", "__pycache__", "data", "exp")
    for package in ("kd_modules", "recipes", "tools"):
        shutil.copytree(REPO / package, target / package, ignore=skipped)
    shutil.copy(REPO / ".importlinter", target / ".importlinter")
    return target


def test_the_tree_keeps_the_import_contract():
    proc = lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Contracts: 3 kept, 0 broken." in proc.stdout


def test_the_old_results_experiment_circle_breaks_the_contract(tmp_path):
    """results.py importing experiment.py again (as it did for RUN_RECORD and data_record, while
    experiment.py imported results inside a function): both the layers and the no-circle
    contract name the import."""
    root = copy_sources(tmp_path)
    results = root / "kd_modules" / "results.py"
    results.write_text(results.read_text() + "\nfrom kd_modules.experiment import Recipe  # noqa\n")
    experiment = root / "kd_modules" / "experiment.py"
    experiment.write_text(experiment.read_text() + "\nfrom kd_modules import results  # noqa\n")
    proc = lint_imports(root)
    assert proc.returncode != 0
    assert "Contracts: 1 kept, 2 broken." in proc.stdout, proc.stdout
    assert "kd_modules.results -> kd_modules.experiment" in proc.stdout  # the layers
    assert ".results -> .experiment" in proc.stdout or ".experiment -> .results" in proc.stdout
