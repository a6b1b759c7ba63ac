"""Speaker verification: trial lists, cosine scoring, S-norm / AS-norm, EER and minDCF.

Embeddings are looked up by id strings that the recipe chooses (e.g. the paths of a VoxCeleb
trial list); nothing here knows a dataset. Scores are cosine similarities in float32. Score
normalisation compares each side of a trial with a cohort of speaker embeddings (the mean
L2-normalised embedding of each of some training speakers):

- S-norm: ``0.5·((s − μ_e)/σ_e + (s − μ_t)/σ_t)``, μ and σ over the enrolment's (e) and the
  test's (t) cosine scores against the whole cohort;
- AS-norm (adaptive S-norm, Matejka et al., Interspeech 2017): the same with μ and σ over the
  ``top_k`` highest cohort scores of each side only.

σ is the unbiased standard deviation (divisor n − 1), floored at :data:`STD_FLOOR`.

:func:`embed` and :func:`cohort_embeddings` give a trained speaker Brain's embeddings (its model
returns ``{"embedding": (B, E)}``) and its cohort; :func:`score_and_write` scores the trials raw
and normalised, writes each score list and returns the metrics: stage 7 of a verification
recipe, apart from its results.json.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from speechbrain.dataio.dataloader import make_dataloader
from torch import Tensor

from kd_modules.brains.ddp import unwrap_module
from kd_modules.dataio import write_text_atomic
from kd_modules.metrics import eer_min_dcf
from kd_modules.progress import progress_bar

Trial = tuple[int, str, str]  # (label: 1 target / 0 non-target, enrol id, test id)

# Floor of a cohort's standard deviation: a constant cohort score never divides by zero.
STD_FLOOR = 1e-6
NORMALISATIONS = ("snorm", "asnorm")
# Score list -> (results.json metric prefix, score file name) of :func:`score_and_write`.
SCORE_FILES = {
    "raw": ("", "scores.txt"),
    "snorm": ("snorm_", "scores_snorm.txt"),
    "asnorm": ("asnorm_", "scores_asnorm.txt"),
}


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _parse_label(text: str) -> int:
    """A trial label field as 1 (target) or 0 (non-target); anything else is a ValueError."""
    if text not in ("0", "1"):
        raise ValueError(f"label must be 0 or 1, got {text!r}")
    return int(text)


def _read_lines(path: str | os.PathLike, fields: str) -> list[tuple[int, list[str]]]:
    """Non-blank lines of ``path`` as (line number, whitespace-split fields).

    ``fields`` names the expected fields, space-separated; a line with another number of fields,
    or a file without any line, raises a ValueError naming the file (and the line)."""
    n_fields, rows = len(fields.split()), []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            parts = line.split()
            if parts and len(parts) != n_fields:
                raise ValueError(f"{path}, line {number}: expected '{fields}', got {line!r}")
            if parts:
                rows.append((number, parts))
    if not rows:
        raise ValueError(f"{path} holds no trials")
    return rows


def read_trials(path: str | os.PathLike) -> list[Trial]:
    """Trials of a ``label enrol test`` list (VoxCeleb's ``veri_test2.txt`` format).

    Blank lines are skipped; a line with another number of fields or a label other than 0 / 1
    raises a ValueError naming the file and the line number.
    """
    trials = []
    for number, (label, enrol, test) in _read_lines(path, "label enrol test"):
        try:
            trials.append((_parse_label(label), enrol, test))
        except ValueError as error:
            raise ValueError(f"{path}, line {number}: {error}") from None
    return trials


def write_scores(path: str | os.PathLike, trials: Sequence[Trial], scores) -> None:
    """Write one trial a line, ``label score enrol test``, atomically (temporary file, rename).

    ``scores`` (N,) aligned with ``trials``; 9 significant digits round-trip a float32 exactly.
    """
    values = _flat(scores).tolist()
    if len(values) != len(trials):
        raise ValueError(f"{len(values)} scores for {len(trials)} trials")
    lines = [f"{label} {s:.9g} {enrol} {test}\n" for (label, enrol, test), s in zip(trials, values)]
    write_text_atomic(path, "".join(lines))


def read_scores(path: str | os.PathLike) -> tuple[list[Trial], Tensor]:
    """The trials (N) and float32 scores (N,) of a file written by :func:`write_scores`."""
    trials, scores = [], []
    for number, (label, score, enrol, test) in _read_lines(path, "label score enrol test"):
        try:
            trials.append((_parse_label(label), enrol, test))
            scores.append(float(score))
        except ValueError as error:
            raise ValueError(f"{path}, line {number}: {error}") from None
    return trials, torch.tensor(scores, dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# Cosine scoring
# --------------------------------------------------------------------------------------------


def cosine_score(enrol: Tensor, test: Tensor) -> Tensor:
    """Cosine similarity (N,) of paired embeddings ``enrol`` and ``test`` (N, E), in float32."""
    if enrol.ndim != 2 or enrol.shape != test.shape:
        raise ValueError(
            f"enrol {tuple(enrol.shape)} and test {tuple(test.shape)} must both be (N, E)"
        )
    return (_unit(enrol) * _unit(test)).sum(-1)


def _flat(x) -> Tensor:
    """A tensor, array or list as a flat CPU tensor without grad (floats in at least float32)."""
    x = torch.as_tensor(x).detach().cpu().reshape(-1)
    return x.to(torch.promote_types(x.dtype, torch.float32)) if x.is_floating_point() else x


def _unit(x: Tensor) -> Tensor:
    """Rows of x (..., E) L2-normalised, in (at least) float32."""
    return F.normalize(x.to(torch.promote_types(x.dtype, torch.float32)), dim=-1)


def _trial_ids(trials: Sequence[Trial]) -> tuple[list[str], Tensor, Tensor]:
    """The distinct ids of ``trials`` (K, sorted) and each trial's enrol and test index (N,)."""
    ids = sorted({i for _, enrol, test in trials for i in (enrol, test)})
    index = {name: k for k, name in enumerate(ids)}
    enrol = torch.tensor([index[e] for _, e, _ in trials], dtype=torch.long)
    test = torch.tensor([index[t] for _, _, t in trials], dtype=torch.long)
    return ids, enrol, test


def _unit_embeddings(embeddings: Mapping[str, Tensor], ids: Sequence[str]) -> Tensor:
    """(K, E) L2-normalised embeddings of ``ids``; KeyError naming the ids that have none."""
    missing = [i for i in ids if i not in embeddings]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise KeyError(f"no embedding for {len(missing)} trial id(s): {shown}")
    return _unit(torch.stack([embeddings[i].reshape(-1) for i in ids]))


def score_trials(embeddings: Mapping[str, Tensor], trials: Sequence[Trial]) -> Tensor:
    """Cosine score (N,) of each trial; ``embeddings`` maps id -> embedding (E,)."""
    ids, enrol, test = _trial_ids(trials)
    unit = _unit_embeddings(embeddings, ids)
    return cosine_score(unit[enrol], unit[test])


# --------------------------------------------------------------------------------------------
# Score normalisation
# --------------------------------------------------------------------------------------------


def speaker_cohort(embeddings: Tensor, speakers: Sequence[str], size: int, seed: int = 0) -> Tensor:
    """The cohort (S, E): the mean L2-normalised embedding of ``size`` training speakers.

    ``embeddings`` (U, E) of utterances whose speakers are ``speakers`` (U). The speakers are
    drawn at random with ``seed`` (reproducible, independent of the global RNG), all of them when
    ``size`` is at least their number; rows follow the sorted speaker names.
    """
    if size <= 0:
        raise ValueError(f"cohort size must be positive, got {size}")
    if embeddings.ndim != 2 or len(speakers) != len(embeddings):
        raise ValueError(
            f"embeddings {tuple(embeddings.shape)} must be (U, E) with one speaker per row, "
            f"got {len(speakers)} speakers"
        )
    names = sorted(set(speakers))
    index = {name: k for k, name in enumerate(names)}
    owner = torch.tensor([index[s] for s in speakers], device=embeddings.device)
    unit = _unit(embeddings)
    sums = unit.new_zeros(len(names), unit.shape[1]).index_add_(0, owner, unit)
    counts = torch.bincount(owner, minlength=len(names)).unsqueeze(1)
    if size >= len(names):
        return sums / counts
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(names), generator=generator)[:size].sort().values
    chosen = chosen.to(embeddings.device)
    return sums[chosen] / counts[chosen]


def _cohort_stats(cohort_scores: Tensor, top_k: int | None) -> tuple[Tensor, Tensor]:
    """Mean and floored unbiased std (each (N,)) of each row of ``cohort_scores`` (N, S), over
    its ``top_k`` highest entries (all when ``top_k`` is None or at least S)."""
    S = cohort_scores.shape[-1]
    k = S if top_k is None else min(top_k, S)
    if k < 2:
        raise ValueError(f"the std needs at least 2 cohort scores, got {k} (cohort {S})")
    scores = cohort_scores if k == S else cohort_scores.topk(k, dim=-1).values
    return scores.mean(-1), scores.std(-1).clamp_min(STD_FLOOR)


def _normalise(
    scores: Tensor, enrol_stats: tuple[Tensor, Tensor], test_stats: tuple[Tensor, Tensor]
) -> Tensor:
    """``0.5·((s − μ_e)/σ_e + (s − μ_t)/σ_t)`` of trial scores (N,) and their sides' stats."""
    (mu_e, sigma_e), (mu_t, sigma_t) = enrol_stats, test_stats
    return 0.5 * ((scores - mu_e) / sigma_e + (scores - mu_t) / sigma_t)


def s_norm(scores: Tensor, enrol_cohort: Tensor, test_cohort: Tensor) -> Tensor:
    """S-norm of trial scores (N,), given each side's scores against the cohort (N, S)."""
    return as_norm(scores, enrol_cohort, test_cohort, top_k=None)


def as_norm(scores: Tensor, enrol_cohort: Tensor, test_cohort: Tensor, top_k: int | None) -> Tensor:
    """Adaptive S-norm of trial scores (N,): each side's μ and σ over its ``top_k`` highest
    cohort scores (rows of ``enrol_cohort`` / ``test_cohort``, (N, S)); None or top_k >= S
    uses the whole cohort (S-norm)."""
    enrol_stats = _cohort_stats(enrol_cohort, top_k)
    return _normalise(scores, enrol_stats, _cohort_stats(test_cohort, top_k))


def normalised_scores(
    embeddings: Mapping[str, Tensor],
    trials: Sequence[Trial],
    cohort: Tensor,
    method: str,
    top_k: int | None = None,
) -> Tensor:
    """Cosine scores (N,) of ``trials`` normalised against ``cohort`` (S, E).

    ``method`` is "snorm" (``top_k`` unused) or "asnorm" (``top_k`` required). The cohort scores
    and their μ, σ are computed once per distinct enrol / test id (K ids: a (K, S) matrix), not
    once per trial.
    """
    if method not in NORMALISATIONS:
        raise ValueError(f"unknown score normalisation {method!r}; valid: {NORMALISATIONS}")
    if method == "asnorm" and top_k is None:
        raise ValueError("asnorm needs top_k, the number of highest cohort scores it keeps")
    ids, enrol, test = _trial_ids(trials)
    unit = _unit_embeddings(embeddings, ids)
    cohort_scores = unit @ _unit(cohort).to(unit.device).T
    mu, sigma = _cohort_stats(cohort_scores, top_k if method == "asnorm" else None)
    scores = cosine_score(unit[enrol], unit[test])
    return _normalise(scores, (mu[enrol], sigma[enrol]), (mu[test], sigma[test]))


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def verification_metrics(
    labels, scores, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0
) -> dict[str, float]:
    """EER and minDCF of trial ``scores`` (N,) with ``labels`` (N,) (1 target, 0 non-target).

    Returns ``eer`` as a fraction (results.json's unit; the results table shows it in %),
    ``min_dcf`` normalised by min(c_miss·p_target,
    c_fa·(1 − p_target)) as the VoxCeleb literature reports it, and ``min_dcf_raw``
    (SpeechBrain's unnormalised value); see :func:`kd_modules.metrics.eer_min_dcf`.
    """
    labels, scores = _flat(labels), _flat(scores)
    if len(labels) != len(scores):
        raise ValueError(f"{len(labels)} labels for {len(scores)} scores")
    target = labels == 1
    if not target.any() or target.all() or not ((labels == 0) | target).all():
        raise ValueError("labels must be 0 or 1, with both target and non-target trials")
    result = eer_min_dcf(scores[target], scores[~target], p_target, c_miss, c_fa)
    return {
        "eer": result["eer"],
        "min_dcf": result["min_dcf"],
        "min_dcf_raw": result["min_dcf_raw"],
    }


# --------------------------------------------------------------------------------------------
# Embeddings of a trained Brain, and stage 7's scoring
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def embed(brain, dataset, batch_size: int, desc: str) -> dict[str, Tensor]:
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


def cohort_embeddings(
    brain, dataset, segments: int, size: int, batch_size: int, speaker_key: str = "spk_id"
) -> Tensor:
    """``(S, E)``: the cohort for score normalisation, from the first ``segments`` items (sorted
    ids) of each speaker of ``dataset`` (the manifest field ``speaker_key``), ``size`` speakers
    (:func:`speaker_cohort`)."""
    per_speaker: dict[str, list[str]] = defaultdict(list)
    for utt in sorted(dataset.data_ids):
        per_speaker[dataset.data[utt][speaker_key]].append(utt)
    chosen = [utt for utts in per_speaker.values() for utt in utts[:segments]]
    speaker_of = {utt: dataset.data[utt][speaker_key] for utt in chosen}
    subset = dataset.filtered_sorted(key_test={"id": lambda utt: utt in speaker_of})
    vectors = embed(brain, subset, batch_size, "cohort embeddings")
    ids = sorted(vectors)
    stacked = torch.stack([vectors[utt] for utt in ids])
    return speaker_cohort(stacked, [speaker_of[utt] for utt in ids], size)


def score_and_write(
    embeddings: Mapping[str, Tensor],
    trials: Sequence[Trial],
    cohort: Tensor,
    folder: str | os.PathLike,
    p_target: float,
    top_k: int,
) -> tuple[dict[str, float], dict[str, str]]:
    """Score ``trials`` raw, S-normed and AS-normed (``top_k``) against ``cohort`` (S, E), write
    each list to ``folder`` (:data:`SCORE_FILES`, :func:`write_scores`) and return the metrics
    (``eer``, ``min_dcf``, ``snorm_*``, ``asnorm_*``) and the files written, by score list."""
    labels = torch.tensor([label for label, _, _ in trials])
    metrics, files = {}, {}
    for kind, (prefix, name) in SCORE_FILES.items():
        if kind == "raw":
            scores = score_trials(embeddings, trials)
        else:
            scores = normalised_scores(embeddings, trials, cohort, kind, top_k)
        write_scores(Path(folder) / name, trials, scores)
        files[kind] = str(Path(folder) / name)
        rates = verification_metrics(labels, scores, p_target)
        metrics[f"{prefix}eer"], metrics[f"{prefix}min_dcf"] = rates["eer"], rates["min_dcf"]
    return metrics, files
