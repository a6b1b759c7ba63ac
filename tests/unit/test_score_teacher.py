"""local/score_teacher.py: a --teacher_source teacher's own trial scores and EER, checked against
the resemblyzer package's own ``VoiceEncoder.embed_utterance`` on the same real utterances
(LibriSpeech test-other; the package's volume normalisation, no silence trimming: what our GE2E
front end does)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from conftest import SHARED_DATA

from kd_modules.dataio import read_audio
from kd_modules.verification import read_scores, verification_metrics
from recipes.speaker_verification.local import score_teacher

with warnings.catch_warnings():  # webrtcvad imports the deprecated pkg_resources
    warnings.simplefilter("ignore")
    package = pytest.importorskip("resemblyzer", reason="pip install -e '.[dev]' installs it")
from resemblyzer.audio import normalize_volume  # noqa: E402

TEST_OTHER = SHARED_DATA / "librispeech_subset" / "LibriSpeech" / "test-other"


def test_scores_and_eer_match_the_package(tmp_path):
    if not TEST_OTHER.is_dir():
        pytest.skip(f"{TEST_OTHER} is not available")
    speakers = sorted(p.name for p in TEST_OTHER.iterdir())[:2]
    files = {
        f"{spk}/{path.stem}": path
        for spk in speakers
        for path in sorted((TEST_OTHER / spk).glob("*/*.flac"))[:2]
    }
    ids = sorted(files)
    (tmp_path / "test.json").write_text(json.dumps({u: {"wav": str(p)} for u, p in files.items()}))
    trials = [
        (int(a.split("/")[0] == b.split("/")[0]), a, b)
        for i, a in enumerate(ids)
        for b in ids[i + 1 :]
    ]
    (tmp_path / "trials.txt").write_text("".join(f"{lab} {a} {b}\n" for lab, a, b in trials))
    out = tmp_path / "teacher.json"
    score_teacher.main(
        ["--teacher_source", "resemblyzer", "--data_folder", str(tmp_path), "--out", str(out)]
        + ["--exp_root", str(tmp_path / "exp")]
    )
    encoder = package.VoiceEncoder(device="cpu", verbose=False)
    embedding = {
        u: encoder.embed_utterance(normalize_volume(read_audio(p, 16000).numpy(), -30, True))
        for u, p in files.items()
    }
    reference = np.array([float(embedding[a] @ embedding[b]) for _, a, b in trials])
    listed, scores = read_scores(out.with_suffix(".scores.txt"))
    assert listed == trials
    np.testing.assert_allclose(scores.numpy(), reference, atol=1e-3)
    result = json.loads(out.read_text())
    expected = verification_metrics([lab for lab, _, _ in trials], reference)
    assert result["eer"] == pytest.approx(expected["eer"]) and result["trials"] == len(trials)
    assert result["teacher"]["source"] == "resemblyzer"
