#!/usr/bin/env python3
"""A ``--teacher_source`` teacher's own EER and minDCF on the prepared test trials (no training).

    python local/score_teacher.py --teacher_source resemblyzer --data_folder data/librispeech \
        --out exp/librispeech/teacher_source/resemblyzer.json

A pretrained teacher skips stage 2, so stage 7 never scores it: this embeds every utterance of
``test.json`` whole, one at a time (the teacher on its own front end gets the 16 kHz waveform),
scores each trial of ``trials.txt`` by cosine (``<out>.scores.txt``: ``label score enrol test``
a line) and writes EER, minDCF, the trial count and the teacher's record (source,
files' SHA-256) as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from kd_modules.dataio import read_audio, read_json, write_json_atomic
from kd_modules.hub.sources import load_source_teacher
from kd_modules.progress import progress_bar
from kd_modules.verification import (
    read_trials,
    score_trials,
    verification_metrics,
    write_scores,
)

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher_source", required=True, help="a registered name or folder")
    parser.add_argument("--data_folder", required=True, type=Path, help="stage 1's output")
    parser.add_argument("--out", required=True, type=Path, help="the JSON to write")
    parser.add_argument("--exp_root", type=Path, default=Path("exp"), help="hub downloads")
    parser.add_argument("--sample_rate", type=int, default=16000)
    return parser.parse_args(argv)


@torch.no_grad()
def embeddings(teacher, manifest: dict, sample_rate: int) -> dict[str, torch.Tensor]:
    """Utterance id -> the teacher's embedding ``(E,)`` of the whole utterance."""
    out = {}
    for utt, entry in progress_bar(manifest.items(), total=len(manifest), desc="embedding"):
        wav = read_audio(entry["wav"], sample_rate)[None]
        out[utt] = teacher(wav, torch.ones(1))["embedding"][0].float()
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    hparams = {"teacher_source": args.teacher_source, "exp_root": str(args.exp_root)}
    teacher = load_source_teacher({**hparams, "teacher_taps": {}})
    trials = read_trials(args.data_folder / "trials.txt")
    embedded = embeddings(teacher, read_json(args.data_folder / "test.json"), args.sample_rate)
    labels = torch.tensor([label for label, _, _ in trials])
    scores = score_trials(embedded, trials)
    write_scores(args.out.with_suffix(".scores.txt"), trials, scores)
    metrics = verification_metrics(labels, scores)
    record = teacher.record() if hasattr(teacher, "record") else {"source": args.teacher_source}
    result = {**metrics, "eer_percent": 100 * metrics["eer"], "trials": len(trials)}
    write_json_atomic(args.out, {**result, "teacher": record, "data_folder": str(args.data_folder)})
    logger.info(
        "%s: EER %.2f %% on %d trials -> %s",
        args.teacher_source,
        100 * metrics["eer"],
        len(trials),
        args.out,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    main()
