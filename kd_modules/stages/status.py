"""What the stage helpers of run.sh ask before they launch a process (tools/stage_helpers.sh).

    python -m kd_modules.stages.status methods KIND KD_DIR METHOD...   # those of KIND, in order
    python -m kd_modules.stages.status value FILE KEY                  # a top-level YAML value
    python -m kd_modules.stages.status done STAMP [--data INFO] -- COMMAND...
    python -m kd_modules.stages.status record STAMP [--data INFO] [--trained RUN_DIR]
                                             [--output FILE]... -- COMMAND...
    python -m kd_modules.stages.status evaluated RUN_DIR
    python -m kd_modules.stages.status exported RUN_DIR [--quantize true|false]

A KD method's *kind* is ``datafree`` when its YAML (``KD_DIR/<method>.yaml``) names a synthesiser
(a top-level ``synthesis: <name>``; stage 6 trains it), else ``kd`` (real-data KD, stages 3 and
5). ``value`` reads a YAML file's top-level key as written, HyperPyYAML tags left unresolved.

A stage is *done* when STAMP, written by ``record`` once the stage's COMMAND exited 0, records
this very command run from this folder and every file it depended on still has the SHA-256 it
had then: the files the command names (its YAML composition), the data (``--data``: stage 1's
data_info.json and the files it lists), the teacher's train_info.json (``--teacher_folder``) and
the stage's outputs (``--trained``: the run's train_info.json, which must say finished;
``--output``: e.g. a teacher cache's meta.json). Anything else (no stamp, another command, a
re-prepared manifest, a retrained teacher, a deleted output) means "launch it": the script then
resumes, refuses or finds nothing to do, as it always did. Skipping a done stage before its
process starts saves the seconds Python takes to import torch and compose the YAML.

*Evaluated* is :func:`kd_modules.outputs.not_evaluated_reason` (stage 7), *exported* is
:func:`kd_modules.outputs.not_exported_reason` (stage 9; ``--quantize true``: with the int8 model).

Exit status of ``done``, ``evaluated`` and ``exported``: 0 yes, 1 no (and why, on stdout);
``record`` exits 0 whether it wrote the record or not (why not, on stdout: e.g. the run did not
finish).
Standard library and PyYAML only: run.sh asks before every run it may launch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from kd_modules.data_info import data_files
from kd_modules.outputs import file_sha256, not_evaluated_reason, not_exported_reason

KINDS = ("kd", "datafree")
TRAIN_INFO = "train_info.json"


class _TagsLeft(yaml.SafeLoader):
    """A YAML loader that reads HyperPyYAML's tags (``!new:``, ``!ref``, ``!PLACEHOLDER``...) as
    the plain value they tag: ``value`` wants what the file says, not what it builds."""


def _untagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_mapping(node, deep=True)


_TagsLeft.add_multi_constructor("!", _untagged)


def yaml_value(path: str | Path, key: str, default: Any = None) -> Any:
    """The top-level ``key`` of the YAML file ``path`` (``default`` when it has none)."""
    with open(path, encoding="utf-8") as stream:
        document = yaml.load(stream, Loader=_TagsLeft) or {}
    return document.get(key, default)


def method_kind(kd_yaml: str | Path) -> str:
    """``datafree`` when the KD method's YAML names a synthesiser, else ``kd``."""
    return "datafree" if yaml_value(kd_yaml, "synthesis") else "kd"


# ----- stage records -----------------------------------------------------------------------------


def _option(command: Sequence[str], name: str) -> str | None:
    """The value of ``--name`` in ``command`` (its last one), or None."""
    values = [command[i + 1] for i, arg in enumerate(command[:-1]) if arg == f"--{name}"]
    return values[-1] if values else None


def inputs_of(command: Sequence[str], data: str | Path | None) -> list[Path]:
    """The files a stage's command depends on: those it names (the YAML composition, a trial
    list...), the data (``data``: a data_info.json and its files) and the teacher's
    train_info.json when it names a ``--teacher_folder``."""
    files = [Path(arg) for arg in command if Path(arg).is_file()]
    if data is not None:
        files += data_files(data)
    teacher = _option(command, "teacher_folder")
    if teacher and (Path(teacher) / TRAIN_INFO).is_file():
        files.append(Path(teacher) / TRAIN_INFO)
    return files


def _checksums(files: Sequence[Path]) -> dict[str, str]:
    """Absolute path -> SHA-256 of each file."""
    return {str(path.resolve()): file_sha256(path) for path in files}


def not_done_reason(stamp: str | Path, command: Sequence[str], data=None) -> str | None:
    """None when ``stamp`` records ``command`` as done (see the module's docstring), else why
    not, in a few words."""
    stamp = Path(stamp)
    if not stamp.is_file():
        return "no record of a finished run of this command"
    if data is not None and not Path(data).is_file():
        return f"{data} is missing"
    record = json.loads(stamp.read_text(encoding="utf-8"))
    if record.get("command") != list(command) or record.get("cwd") != os.getcwd():
        return "recorded for another command"
    recorded = record.get("files", {})
    unrecorded = {str(path.resolve()) for path in inputs_of(command, data)} - set(recorded)
    if unrecorded:
        return f"{sorted(unrecorded)[0]} was not an input then"
    for path, sha256 in recorded.items():
        if not Path(path).is_file():
            return f"{path} is missing"
        if file_sha256(path) != sha256:
            return f"{path} changed since"
    return None


def record_done(
    stamp: str | Path,
    command: Sequence[str],
    data=None,
    trained: str | Path | None = None,
    outputs: Sequence[str | Path] = (),
) -> str | None:
    """Write ``stamp`` for ``command`` (which has just exited 0) with the checksums of its inputs
    and ``outputs``; None when written, else why not (a run whose train_info.json does not say
    finished is not done)."""
    outputs = [Path(path) for path in outputs]
    if data is not None and not Path(data).is_file():
        return f"{data} is missing"
    if trained is not None:
        info = Path(trained) / TRAIN_INFO
        if not info.is_file() or not json.loads(info.read_text()).get("finished"):
            return f"{info} does not say finished"
        outputs.append(info)
    files = [*inputs_of(command, data), *outputs]
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        return f"{missing[0]} is missing"
    record = {"command": list(command), "cwd": os.getcwd(), "files": _checksums(files)}
    stamp = Path(stamp)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    temporary = stamp.with_name(f".{stamp.name}.tmp")
    temporary.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    temporary.replace(stamp)
    return None


# ----- the command line --------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kd_modules.stages.status", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="question", required=True)
    methods = commands.add_parser("methods", help="the methods of one kind")
    methods.add_argument("kind", choices=KINDS)
    methods.add_argument("kd_dir", type=Path, help="hparams/kd")
    methods.add_argument("methods", nargs="*")
    value = commands.add_parser("value", help="a top-level YAML value")
    value.add_argument("file", type=Path)
    value.add_argument("key")
    for name in ("done", "record"):
        stamp = commands.add_parser(name, help=f"{name}: a stage's record")
        stamp.add_argument("stamp", type=Path)
        stamp.add_argument("--data", type=Path, help="stage 1's data_info.json")
        if name == "record":
            stamp.add_argument("--trained", type=Path, help="the run folder trained")
            stamp.add_argument("--output", type=Path, action="append", default=[])
    evaluated = commands.add_parser("evaluated", help="is the run folder evaluated")
    evaluated.add_argument("run_dir", type=Path)
    exported = commands.add_parser("exported", help="is the run folder exported (stage 9)")
    exported.add_argument("run_dir", type=Path)
    exported.add_argument("--quantize", choices=("true", "false"), default="false")
    return parser


def answer(argv: Sequence[str]) -> str | None:
    """The answer to one question: a line to print with exit status 0 (``methods``, ``value``),
    or None / a reason (``done``, ``record``, ``evaluated``, ``exported``: None means yes)."""
    argv = list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args, command = _parser().parse_args(argv[:split]), argv[split + 1 :]
    if args.question == "methods":
        kinds = {method: method_kind(args.kd_dir / f"{method}.yaml") for method in args.methods}
        return " ".join(method for method in args.methods if kinds[method] == args.kind)
    if args.question == "value":
        value = yaml_value(args.file, args.key)
        if value is None:
            return ""
        return " ".join(map(str, value)) if isinstance(value, list) else str(value)
    if args.question == "evaluated":
        return not_evaluated_reason(args.run_dir)
    if args.question == "exported":
        return not_exported_reason(args.run_dir, int8=args.quantize == "true")
    if not command:
        raise SystemExit(f"{args.question}: give the stage's command after --")
    if args.question == "done":
        return not_done_reason(args.stamp, command, args.data)
    return record_done(args.stamp, command, args.data, args.trained, args.output)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    result = answer(argv)
    if result is not None:
        print(result)
    if result is not None and argv[0] in ("done", "evaluated", "exported"):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
