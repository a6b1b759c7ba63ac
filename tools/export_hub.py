#!/usr/bin/env python3
"""Write a finished run (teacher or student, any recipe) in SpeechBrain's hub format.

    python tools/export_hub.py --run RUN_FOLDER --out FOLDER [--labels FILE] [--max_key KEY]

``FOLDER`` then loads offline with
``speechbrain.inference.classifiers.EncoderClassifier.from_hparams(source=FOLDER, savedir=...)``,
and as a teacher with ``--teacher_source FOLDER``. What is written, and why: kd_modules.hub.export.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from kd_modules.hparams import run_main
from kd_modules.hub.export import export_hub


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished run folder")
    parser.add_argument("--out", type=Path, required=True, help="the hub-format folder to write")
    parser.add_argument(
        "--labels",
        type=Path,
        help="class names (labels.json / speakers.json); default: found from the run's data_folder",
    )
    parser.add_argument(
        "--max_key", help="the checkpoint with the largest KEY (default: the run's)"
    )
    return parser


def main(argv: list[str]) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    record = export_hub(args.run, args.out, args.labels, args.max_key)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
