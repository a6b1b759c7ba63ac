"""Speaker-verification scoring against independent numpy computations: cosine scores, S-norm,
AS-norm, the cohort, EER / minDCF by a brute-force threshold sweep, trial and score files."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch
from conftest import FSDD_CLIPS, SPEAKER_VERIFICATION
from speechbrain.dataio.dataset import DynamicItemDataset

from kd_modules.dataio import audio_pipeline
from kd_modules.hparams import load_composed
from kd_modules.verification import (
    SCORE_FILES,
    STD_FLOOR,
    as_norm,
    cosine_score,
    embed,
    normalised_scores,
    read_scores,
    read_trials,
    s_norm,
    score_and_write,
    score_trials,
    speaker_cohort,
    verification_metrics,
    write_scores,
)
from recipes.speaker_verification import train


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def speaker_set(n_speakers: int, per_speaker: int, noise: float, seed: int):
    """Embeddings ``{"spkS/uttU": (16,)}`` around orthonormal speaker centres, plus Gaussian
    noise of std ``noise`` per dimension, and trials: every pair of utterances, label 1 when they
    share the speaker."""
    centres = torch.linalg.qr(randn(16, n_speakers, seed=seed)).Q.T
    noises = randn(n_speakers, per_speaker, 16, seed=seed + 1)
    embeddings = {
        f"spk{s}/utt{u}": centres[s] + noise * noises[s, u]
        for s in range(n_speakers)
        for u in range(per_speaker)
    }
    ids = sorted(embeddings)
    trials = [
        (int(a.split("/")[0] == b.split("/")[0]), a, b)
        for i, a in enumerate(ids)
        for b in ids[i + 1 :]
    ]
    return embeddings, trials


def numpy_cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def numpy_norm(score: float, enrol: np.ndarray, test: np.ndarray, top_k: int | None) -> float:
    """One trial's S-norm (top_k None) or AS-norm, from its sides' cohort scores (S,)."""
    sides = []
    for cohort in (enrol, test):
        kept = np.sort(cohort)[::-1][:top_k] if top_k else cohort
        sides.append((score - kept.mean()) / max(kept.std(ddof=1), STD_FLOOR))
    return 0.5 * (sides[0] + sides[1])


def brute_force_eer_min_dcf(labels, scores, p_target: float) -> tuple[float, float]:
    """EER (%) and normalised minDCF by a comparison-matrix sweep over every score and -inf
    (accept when score > threshold; EER at the lowest threshold of smallest |FAR − FRR|)."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    pos, neg = scores[labels == 1], scores[labels == 0]
    thresholds = np.concatenate([[-np.inf], np.sort(scores)])
    misses = (pos[None, :] <= thresholds[:, None]).sum(1)
    false_alarms = (neg[None, :] > thresholds[:, None]).sum(1)
    gap = np.abs(false_alarms * len(pos) - misses * len(neg))
    best = int(np.flatnonzero(gap == gap.min())[0])
    frr, far = misses / len(pos), false_alarms / len(neg)
    eer = 100 * (frr[best] + far[best]) / 2
    dcf = frr * p_target + far * (1 - p_target)
    return float(eer), float(dcf.min() / min(p_target, 1 - p_target))


# ---------------------------------------------------------------- scoring and normalisation


def test_cosine_score_and_score_trials_match_numpy():
    embeddings, trials = speaker_set(3, 3, noise=1.0, seed=0)
    scores = score_trials(embeddings, trials)
    expected = [numpy_cos(embeddings[e].numpy(), embeddings[t].numpy()) for _, e, t in trials]
    assert scores.dtype == torch.float32 and scores.shape == (len(trials),)
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-5, atol=1e-6)
    enrol, test = randn(4, 8, seed=1).half(), randn(4, 8, seed=2).half()
    pairs = [numpy_cos(a, b) for a, b in zip(enrol.double().numpy(), test.double().numpy())]
    np.testing.assert_allclose(cosine_score(enrol, test).numpy(), pairs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("top_k", [None, 1_000, 4])
def test_s_norm_and_as_norm_match_per_trial_loops(top_k):
    scores, enrol, test = randn(7, seed=3), randn(7, 10, seed=4), randn(7, 10, seed=5)
    value = s_norm(scores, enrol, test) if top_k is None else as_norm(scores, enrol, test, top_k)
    k = None if top_k is None or top_k >= 10 else top_k  # top_k >= S: the whole cohort
    expected = [
        numpy_norm(s, e, t, k) for s, e, t in zip(scores.numpy(), enrol.numpy(), test.numpy())
    ]
    np.testing.assert_allclose(value.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_constant_cohort_scores_use_the_std_floor():
    value = s_norm(torch.tensor([0.5]), torch.full((1, 4), 0.25), torch.full((1, 4), 0.5))
    assert value.item() == pytest.approx(0.5 * (0.25 / STD_FLOOR), rel=1e-5)


@pytest.mark.parametrize("method, top_k", [("snorm", None), ("asnorm", 5)])
def test_normalised_scores_match_per_trial_loops(method, top_k):
    embeddings, trials = speaker_set(4, 3, noise=1.0, seed=6)
    cohort = randn(12, 16, seed=7)
    value = normalised_scores(embeddings, trials, cohort, method, top_k)
    expected = []
    for _, e, t in trials:
        enrol, test = embeddings[e].numpy(), embeddings[t].numpy()
        enrol_cohort = np.array([numpy_cos(enrol, c) for c in cohort.numpy()])
        test_cohort = np.array([numpy_cos(test, c) for c in cohort.numpy()])
        expected.append(numpy_norm(numpy_cos(enrol, test), enrol_cohort, test_cohort, top_k))
    np.testing.assert_allclose(value.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_speaker_cohort_means_unit_embeddings_and_draws_with_the_seed():
    speakers = ["b", "a", "c", "a", "d", "b", "e", "c"]
    embeddings = randn(len(speakers), 6, seed=8)
    unit = embeddings.numpy() / np.linalg.norm(embeddings.numpy(), axis=1, keepdims=True)
    means = {
        s: unit[[i for i, o in enumerate(speakers) if o == s]].mean(0) for s in sorted(speakers)
    }
    everyone = speaker_cohort(embeddings, speakers, size=5)
    np.testing.assert_allclose(everyone.numpy(), np.stack(list(means.values())), rtol=1e-6)
    assert torch.equal(speaker_cohort(embeddings, speakers, size=99), everyone)
    drawn = speaker_cohort(embeddings, speakers, size=3, seed=1)
    assert drawn.shape == (3, 6) and torch.equal(drawn, speaker_cohort(embeddings, speakers, 3, 1))
    rows = [r.tolist() for r in everyone]
    assert all(r in rows for r in drawn.tolist())  # 3 of the 5 speaker means, each once
    assert len({tuple(r) for r in drawn.tolist()}) == 3
    draws = {
        tuple(map(tuple, speaker_cohort(embeddings, speakers, 3, s).tolist())) for s in range(8)
    }
    assert len(draws) > 1  # the seed changes the draw
    with pytest.raises(ValueError, match="cohort size must be positive, got 0"):
        speaker_cohort(embeddings, speakers, size=0)


# ---------------------------------------------------------------- metrics


@pytest.mark.parametrize("method, p_target", [("snorm", 0.01), ("asnorm", 0.05)])
def test_metrics_of_normalised_scores_match_brute_force_sweep(method, p_target):
    embeddings, trials = speaker_set(6, 4, noise=0.3, seed=9)
    cohort = speaker_cohort(randn(40, 16, seed=10), [f"c{i % 20}" for i in range(40)], 20)
    scores = normalised_scores(embeddings, trials, cohort, method, top_k=8)
    labels = [label for label, _, _ in trials]
    result = verification_metrics(labels, scores, p_target=p_target)
    eer, min_dcf = brute_force_eer_min_dcf(labels, scores.numpy(), p_target)
    assert 5 < eer < 45  # a system that is neither perfect nor chance: the sweep matters
    assert 100 * result["eer"] == pytest.approx(eer, abs=1e-9)
    assert result["min_dcf"] == pytest.approx(min_dcf, abs=1e-9)
    assert result["min_dcf_raw"] == pytest.approx(min_dcf * min(p_target, 1 - p_target))


def test_well_separated_speakers_give_zero_eer():
    embeddings, trials = speaker_set(5, 4, noise=0.05, seed=11)
    labels = [label for label, _, _ in trials]
    cohort = randn(10, 16, seed=12)
    for scores in (
        score_trials(embeddings, trials),
        normalised_scores(embeddings, trials, cohort, "snorm"),
        normalised_scores(embeddings, trials, cohort, "asnorm", top_k=3),
    ):
        assert verification_metrics(labels, scores) == {
            "eer": 0.0,
            "min_dcf": 0.0,
            "min_dcf_raw": 0.0,
        }


# ---------------------------------------------------------------- files and errors


def test_trials_and_scores_files_round_trip(tmp_path):
    lines = [
        "1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav",
        "0 id10270/x6uYqmx31kE/00001.wav id10300/ize_eiCFEg0/00003.wav",
        "",  # a blank (e.g. trailing) line is skipped
    ]
    (tmp_path / "veri_test2.txt").write_text("\n".join(lines) + "\n")
    trials = read_trials(tmp_path / "veri_test2.txt")
    assert trials == [tuple([int(f[0]), *f.split()[1:]]) for f in lines[:2]]
    scores = torch.tensor([0.123456789, -0.5], dtype=torch.float32)
    write_scores(tmp_path / "scores" / "cosine.txt", trials, scores)
    assert os.listdir(tmp_path / "scores") == ["cosine.txt"]  # no temporary file left
    text = (tmp_path / "scores" / "cosine.txt").read_text().splitlines()
    assert text[1] == "0 -0.5 id10270/x6uYqmx31kE/00001.wav id10300/ize_eiCFEg0/00003.wav"
    read_back, read_values = read_scores(tmp_path / "scores" / "cosine.txt")
    assert read_back == trials and torch.equal(read_values, scores)  # float32 exactly


@pytest.mark.parametrize(
    "line, problem",
    [
        ("1 a.wav", "expected 'label enrol test', got '1 a.wav\\n'"),
        ("target a.wav b.wav", "label must be 0 or 1, got 'target'"),
    ],
)
def test_bad_trial_line_names_file_and_line(tmp_path, line, problem):
    path = tmp_path / "trials.txt"
    path.write_text(f"1 a.wav b.wav\n\n{line}\n")
    with pytest.raises(ValueError, match=f"^{re.escape(f'{path}, line 3: {problem}')}$"):
        read_trials(path)


def test_empty_trial_file_is_an_error(tmp_path):
    (tmp_path / "trials.txt").write_text("\n")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'trials.txt'} holds no trials")):
        read_trials(tmp_path / "trials.txt")


def test_missing_embedding_id_is_named():
    embeddings = {"a": torch.ones(4), "b": torch.ones(4)}
    trials = [(1, "a", "b"), (0, "a", "zz/1.wav"), (0, "yy/2.wav", "b")]
    with pytest.raises(KeyError, match=re.escape("no embedding for 2 trial id(s): yy/2.wav, zz/1")):
        score_trials(embeddings, trials)
    with pytest.raises(KeyError, match="no embedding for 2 trial id"):
        normalised_scores(embeddings, trials, torch.ones(3, 4), "snorm")


def test_score_and_write_gives_each_list_its_file_and_metrics(tmp_path):
    """Stage 7's scoring: raw, S-norm and AS-norm lists, each in its file (every trial, in order)
    and scored by the file's own numbers."""
    embeddings, trials = speaker_set(n_speakers=4, per_speaker=3, noise=0.6, seed=21)
    cohort = randn(6, 16, seed=22)
    metrics, files = score_and_write(embeddings, trials, cohort, tmp_path, 0.01, top_k=3)
    assert sorted(files) == sorted(SCORE_FILES) and len(metrics) == 6
    labels = torch.tensor([label for label, _, _ in trials])
    expected = {
        "raw": score_trials(embeddings, trials),
        "snorm": normalised_scores(embeddings, trials, cohort, "snorm"),
        "asnorm": normalised_scores(embeddings, trials, cohort, "asnorm", top_k=3),
    }
    for kind, (prefix, name) in SCORE_FILES.items():
        assert files[kind] == str(tmp_path / name)
        read_back, scores = read_scores(files[kind])
        assert read_back == trials and torch.allclose(scores, expected[kind])
        rates = verification_metrics(labels, scores, 0.01)
        assert metrics[f"{prefix}eer"] == rates["eer"]
        assert metrics[f"{prefix}min_dcf"] == rates["min_dcf"]


def test_normalisation_argument_errors():
    embeddings, trials = {"a": torch.ones(4), "b": -torch.ones(4)}, [(0, "a", "b")]
    cohort = randn(5, 4, seed=13)
    with pytest.raises(ValueError, match="unknown score normalisation 'znorm'"):
        normalised_scores(embeddings, trials, cohort, "znorm")
    with pytest.raises(ValueError, match="asnorm needs top_k"):
        normalised_scores(embeddings, trials, cohort, "asnorm")
    with pytest.raises(ValueError, match=re.escape("at least 2 cohort scores, got 1 (cohort 5)")):
        normalised_scores(embeddings, trials, cohort, "asnorm", top_k=1)
    with pytest.raises(ValueError, match="labels must be 0 or 1, with both target and non-target"):
        verification_metrics([1, 1], [0.2, 0.3])


def test_verify_embedding_bar_has_a_total_in_a_log(tmp_path, capsys):
    """Issue 16 item 6: stage 7's embedding loop shows done/total on stderr that is not a terminal
    (a nohup log), where its bar used to be switched off; real FSDD speech, the tiny ECAPA."""
    hp = SPEAKER_VERIFICATION / "hparams"
    hparams = load_composed(
        [hp / "common.yaml", hp / "student/ecapa_tiny.yaml", hp / "kd/none.yaml"],
        {"data_folder": str(tmp_path), "output_folder": str(tmp_path / "run"), "n_speakers": 4},
    )
    clips = sorted(FSDD_CLIPS.glob("*.flac"))[:5]
    manifest = tmp_path / "test.json"
    manifest.write_text(json.dumps({clip.stem: {"wav": str(clip)} for clip in clips}))
    dataset = DynamicItemDataset.from_json(
        manifest, dynamic_items=[audio_pipeline(16000)], output_keys=["id", "sig"]
    )
    brain = train.make_brain(hparams, {"device": "cpu"}, checkpoints=False)
    embeddings = embed(brain, dataset, batch_size=2, desc="test embeddings")
    assert sorted(embeddings) == sorted(clip.stem for clip in clips)
    lines = [line for line in capsys.readouterr().err.splitlines() if "test embeddings" in line]
    assert "0/3 " in lines[0] and "3/3 " in lines[-1], lines  # 5 clips in batches of 2
