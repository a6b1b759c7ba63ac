#!/usr/bin/env python3
"""Stage 7: verify a trained run on the trial list and write its results.json.

    python verify.py <the run's YAML composition and arguments> --output_folder RUN_DIR

Loads the run's best checkpoint (speaker-ID accuracy on the validation segments), embeds every
test utterance whole, scores each trial by cosine, and normalises the scores with S-norm and
AS-norm against a cohort of training speakers (the mean embedding of ``cohort_segments``
segments of each of ``cohort_size`` speakers). Each score list is written one trial a line
(``label score enrol test``) to ``scores[_snorm|_asnorm].txt`` in the run folder, which
results.json names under ``scores``; the metrics are EER and minDCF (p_target 0.01,
C_miss = C_fa = 1, normalised) as ``eer``/``min_dcf`` and ``snorm_*``/``asnorm_*``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import defaultdict
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.dataio.dataloader import make_dataloader
from speechbrain.utils.distributed import if_main_process

from kd_modules.brains.distill import unwrap_module
from kd_modules.experiment import common_results
from kd_modules.hparams import run_main
from kd_modules.progress import progress_bar
from kd_modules.results import write_results
from kd_modules.verification import (
    normalised_scores,
    read_trials,
    score_trials,
    speaker_cohort,
    verification_metrics,
    write_scores,
)

logger = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test")


@torch.no_grad()
def embed(brain, dataset, batch_size: int, desc: str) -> dict[str, torch.Tensor]:
    """Utterance id -> embedding ``(E,)`` (CPU, float32) of every readable item of ``dataset``,
    from the Brain's model in eval mode on the clean features; a progress bar (batches done of
    the total, ETA) goes to stderr, as lines every 30 s when stderr is a log."""
    model = unwrap_module(brain.modules.model).eval()
    collate = brain.hparams.eval_dataloader_options["collate_fn"]
    loader = make_dataloader(dataset, batch_size=batch_size, collate_fn=collate)
    embeddings = {}
    for batch in progress_bar(loader, desc=desc, unit="batch"):
        batch = batch.to(brain.device)
        wavs, lens = batch.sig
        if wavs.numel() == 0:
            continue  # every clip of the batch was unreadable
        feats, frame_lens = brain.hparams.front_end.features_and_lengths(wavs, lens)
        vectors = model(feats, frame_lens)["embedding"].float().cpu()
        embeddings.update(zip(batch.id, vectors))
    return embeddings


def cohort_embeddings(brain, dataset, hparams: dict) -> torch.Tensor:
    """``(S, E)``: the cohort of training speakers for score normalisation."""
    per_speaker: dict[str, list[str]] = defaultdict(list)
    for utt in sorted(dataset.data_ids):
        per_speaker[dataset.data[utt]["spk_id"]].append(utt)
    chosen = [u for utts in per_speaker.values() for u in utts[: hparams["cohort_segments"]]]
    speaker_of = {utt: dataset.data[utt]["spk_id"] for utt in chosen}
    subset = dataset.filtered_sorted(key_test={"id": lambda utt: utt in speaker_of})
    vectors = embed(brain, subset, hparams["embedding_batch_size"], "cohort embeddings")
    ids = sorted(vectors)
    stacked = torch.stack([vectors[utt] for utt in ids])
    return speaker_cohort(stacked, [speaker_of[utt] for utt in ids], hparams["cohort_size"])


def write_verification_results(brain, hparams: dict, datasets: dict, train_info: dict) -> None:
    """Verify the best-validation checkpoint on the trial list; write scores and results.json."""
    started = time.time()
    if not if_main_process():
        return
    brain.on_evaluate_start(max_key="accuracy")
    brain.on_stage_start(sb.Stage.TEST, None)
    output = Path(hparams["output_folder"])
    test = embed(brain, datasets["test"], hparams["embedding_batch_size"], "test embeddings")
    all_trials = read_trials(hparams["trials_file"])
    trials = [t for t in all_trials if t[1] in test and t[2] in test]
    if len(trials) < len(all_trials):
        logger.warning("%d trials skipped: unreadable audio", len(all_trials) - len(trials))
    cohort = cohort_embeddings(brain, datasets["train"], hparams)
    labels = torch.tensor([label for label, _, _ in trials])
    score_lists = {
        "": score_trials(test, trials),
        "snorm_": normalised_scores(test, trials, cohort, "snorm", hparams["asnorm_top_k"]),
        "asnorm_": normalised_scores(test, trials, cohort, "asnorm", hparams["asnorm_top_k"]),
    }
    metrics, files = {}, {}
    for prefix, scores in score_lists.items():
        name = f"scores{'_' + prefix.rstrip('_') if prefix else ''}.txt"
        write_scores(output / name, trials, scores)
        files[prefix.rstrip("_") or "raw"] = str(output / name)
        rates = verification_metrics(labels, scores, hparams["p_target"])
        metrics[f"{prefix}eer"], metrics[f"{prefix}min_dcf"] = rates["eer"], rates["min_dcf"]
    results = {
        "task": "speaker_verification",
        "dataset": hparams["dataset"],
        "metrics": metrics,
        **common_results(brain, hparams, train_info, datasets["test"], "accuracy", started, SPLITS),
        "scores": files,
        "trials": len(trials),
        "skipped_trials": len(all_trials) - len(trials),
        "cohort_speakers": int(cohort.shape[0]),
    }
    write_results(output / "results.json", results)
    logger.info("EER %.2f%%, minDCF %.4f -> %s", 100 * metrics["eer"], metrics["min_dcf"], output)


def main(argv: list[str] | None = None) -> None:
    """Stage 7's entry: train.py's run with ``--test_only`` (never trains)."""
    from train import main as train_main

    argv = list(sys.argv[1:] if argv is None else argv)
    train_main(argv if "--test_only" in argv else [*argv, "--test_only"])


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
