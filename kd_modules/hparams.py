"""Compose an experiment from several YAML files, one per concern, and parse a recipe's CLI.

A run is ``common.yaml`` + one architecture file + one KD-method file, never one file per
combination. The files are concatenated (each defines its own top-level keys; a key defined twice
is an error) and loaded as one HyperPyYAML document, so ``!ref`` works across files and every
top-level key can be overridden from the command line; a misspelt override is an error.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml


def compose_yaml(files: list[str | Path]) -> str:
    """Concatenate YAML files into one document, each part headed by its source path."""
    if not files:
        raise ValueError("No hyperparameter file given: pass at least one .yaml file")
    parts = []
    for file in files:
        path = Path(file)
        if not path.is_file():
            raise FileNotFoundError(f"Hyperparameter file not found: {path}")
        parts.append(f"# ---- {path} ----\n{path.read_text().rstrip()}\n")
    return "\n".join(parts)


def parse_recipe_arguments(argv: list[str] | None = None) -> tuple[list[str], dict, str]:
    """Split ``train.py a.yaml b.yaml ... --key value`` into files, run options and overrides.

    Leading arguments ending in ``.yaml`` are the composition; everything after goes through
    SpeechBrain's own parser, so ``--device``, ``--precision``, ``--distributed_backend`` etc.
    mean what they mean in SpeechBrain, and other ``--key value`` pairs are YAML overrides.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    files = []
    while argv and argv[0].endswith((".yaml", ".yml")):
        files.append(argv.pop(0))
    if not files:
        raise SystemExit("usage: train.py common.yaml [arch.yaml kd.yaml ...] [--key value ...]")
    _, run_opts, overrides = sb.parse_arguments([files[0], *_per_rank_device(argv)])
    return files, run_opts, overrides


def _per_rank_device(argv: list[str]) -> list[str]:
    """Under torchrun, turn ``--device cuda`` into ``--device cuda:<LOCAL_RANK>``.

    SpeechBrain keeps an explicit device as given, so every rank would otherwise use GPU 0.
    """
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is None:
        return argv
    argv = list(argv)
    for index, arg in enumerate(argv):
        if arg == "--device" and index + 1 < len(argv) and argv[index + 1] == "cuda":
            argv[index + 1] = f"cuda:{local_rank}"
        elif arg == "--device=cuda":
            argv[index] = f"--device=cuda:{local_rank}"
    return argv


def load_composed(files: list[str | Path], overrides: str | dict | None = None) -> dict:
    """Load the composed document with overrides (unknown override keys raise an error)."""
    return load_hyperpyyaml(compose_yaml(files), overrides, overrides_must_match=True)


def write_composed(files: list[str | Path], path: str | Path) -> Path:
    """Write the composed YAML to ``path`` (for SpeechBrain's experiment-directory copy)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(compose_yaml(files))
    return path
