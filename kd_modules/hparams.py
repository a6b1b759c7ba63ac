"""Compose an experiment from several YAML files, one per concern, and parse a recipe's CLI.

A run is ``common.yaml`` + one architecture file + one KD-method file, never one file per
combination. The files are concatenated (each defines its own top-level keys; a key defined twice
is an error) and loaded as one HyperPyYAML document, so ``!ref`` works across files and every
top-level key can be overridden from the command line; a misspelt override is an error.
Overrides are checked before any object is built: an unknown key or a value that does not fit its
key's scalar default raises ``HparamsError`` with a one-line message for the user.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import ruamel.yaml
import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml


class OneLineError(Exception):
    """An error whose message tells the user what is wrong and the way out, in one line:
    :func:`run_main` prints it as it is, no traceback, and exits with ``exit_status``."""

    exit_status = 1


class HparamsError(OneLineError, ValueError):
    """An override the composed YAML cannot take; the message is one line, meant as it is."""

    exit_status = 2  # a usage error


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
    mean what they mean in SpeechBrain, and other ``--key value`` pairs are YAML overrides. A
    key given twice takes its last value (run.sh's ``--teacher_args`` come after
    ``--extra_args``, so ``--teacher_args "--number_of_epochs 40"`` overrides the epochs that
    ``--extra_args`` gives every run).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    files = []
    while argv and argv[0].endswith((".yaml", ".yml")):
        files.append(argv.pop(0))
    if not files:
        raise SystemExit("usage: train.py common.yaml [arch.yaml kd.yaml ...] [--key value ...]")
    argv = _last_value_wins(_per_rank_device(argv))
    _, run_opts, overrides = sb.parse_arguments([files[0], *argv])
    return files, run_opts, overrides


def _last_value_wins(argv: list[str]) -> list[str]:
    """``--key value`` pairs (and ``--flag``s) with each key kept once, at its last value."""
    options: dict[str, list[str]] = {}
    index = 0
    while index < len(argv):
        key = argv[index].split("=", 1)[0]
        has_value = "=" not in argv[index] and index + 1 < len(argv)
        if has_value and not argv[index + 1].startswith("--"):
            options.pop(key, None)
            options[key] = argv[index : index + 2]
            index += 2
        else:
            options.pop(key, None)
            options[key] = [argv[index]]
            index += 1
    return [token for tokens in options.values() for token in tokens]


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
    """Load the composed document with overrides (a YAML string as SpeechBrain parses them, or a
    dict); ``check_overrides`` first, so a bad override raises ``HparamsError``."""
    document = compose_yaml(files)
    check_overrides(document, overrides, files)
    return load_hyperpyyaml(document, overrides, overrides_must_match=True)


def check_overrides(
    document: str, overrides: str | dict | None, files: Sequence[str | Path] = ()
) -> None:
    """Raise ``HparamsError`` for an override that is not a top-level key of ``document`` (naming
    the closest keys) or whose value does not fit the key's int, float or bool default.

    The document is read as plain YAML (tags kept, nothing built), so this runs before any
    object sees a wrong value: ``--number_of_epochs two`` would otherwise fail deep inside
    SpeechBrain's EpochCounter with a message that names no key.
    """
    yaml = ruamel.yaml.YAML()
    requested = yaml.load(overrides) if isinstance(overrides, str) else overrides
    if not requested:
        return
    defaults = yaml.load(document) or {}
    for key, value in requested.items():
        if key not in defaults:
            raise HparamsError(_unknown_key_message(key, list(defaults), files))
        expected = _expected_type(defaults[key], value)
        if expected:
            raise HparamsError(
                f"invalid hyperparameter --{key} {value!r}: expected {expected} "
                f"(its YAML default is {defaults[key]!r})"
            )


def _unknown_key_message(key: str, keys: list[str], files: Sequence[str | Path]) -> str:
    close = difflib.get_close_matches(key, keys, n=3)
    if close:
        return f"unknown hyperparameter --{key} (closest valid names: {', '.join(close)})"
    where = ", ".join(str(file) for file in files) or "the YAML"
    return f"unknown hyperparameter --{key} (no similar name among the {len(keys)} keys of {where})"


def _expected_type(default: object, value: object) -> str | None:
    """What ``value`` should be to replace the scalar ``default``, or None when it fits.

    Only int, float and bool defaults are checked (bool before int: ``True`` is an int in
    Python); a null or tagged value (``!ref <x>``) and any other default are left to HyperPyYAML.
    """
    tagged = getattr(getattr(value, "tag", None), "value", None) is not None
    if value is None or tagged:
        return None
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "True or False"
    if isinstance(default, int):
        return None if is_number and isinstance(value, int) else "an integer"
    if isinstance(default, float):
        return None if is_number else "a number"
    return None


def run_main(main: Callable[[list[str]], object], argv: list[str]) -> None:
    """Run a recipe script's ``main(argv)``; a :class:`OneLineError` ends the process with its
    one-line message on stderr and its exit status (2 for an ``HparamsError``, a usage error; 1
    for a run folder that refuses the command): a traceback would add nothing."""
    try:
        main(argv)
    except OneLineError as err:
        print(f"{Path(sys.argv[0]).name}: {err}", file=sys.stderr)
        raise SystemExit(err.exit_status) from None


def write_composed(files: list[str | Path], path: str | Path) -> Path:
    """Write the composed YAML to ``path`` (for SpeechBrain's experiment-directory copy)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(compose_yaml(files))
    return path
