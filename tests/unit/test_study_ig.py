"""tools/study_ig.py on real speech: the speaker recipe's tiny ECAPA teacher (random weights) on a
2 s LibriSpeech crop through the recipe's front end. More Gauss–Legendre nodes must close the
completeness gap and bring the weight map closer to the reference (MRE down, Spearman up); the
reference agrees with itself exactly; the rule:steps parser names what it wanted."""

from __future__ import annotations

import pytest
import torch
from conftest import SPEAKER_VERIFICATION

from kd_modules.dataio import read_audio
from kd_modules.hparams import load_composed
from kd_modules.teacher import Teacher
from tools import study_ig

HP = SPEAKER_VERIFICATION / "hparams"
CLIP = "LibriSpeech/train-clean-100/83/11691/83-11691-0000.flac"


@pytest.fixture(scope="module")
def rows(shared_data) -> dict[str, dict]:
    hparams = load_composed(
        [HP / "common.yaml", HP / "teacher/ecapa_tiny.yaml", HP / "kd/none.yaml"],
        {"data_folder": "unused", "output_folder": "unused", "n_speakers": 4, "seed": 0},
    )
    wav = read_audio(shared_data / "librispeech_subset" / CLIP, 16000)[: 2 * 16000]
    with torch.no_grad():
        feats = hparams["front_end"](wav.unsqueeze(0), torch.ones(1))
    variants = ["gausslegendre:2", "gausslegendre:8"]
    teacher, labels = Teacher(hparams["model"]), torch.tensor([1])
    table = study_ig.study(teacher, hparams, feats, labels, variants, "gausslegendre:32", 1)
    return {row["variant"]: row for row in table}


def test_more_nodes_close_the_gap_and_approach_the_reference(rows):
    coarse, fine = rows["gausslegendre:2"], rows["gausslegendre:8"]
    # a random teacher's path is rough (its gap falls only by 32 nodes), the map converges first
    assert rows["gausslegendre:32"]["gap"] < min(coarse["gap"], fine["gap"]) / 4, rows
    assert fine["rel_error"] < coarse["rel_error"] and fine["spearman"] > coarse["spearman"]
    assert coarse["s_per_crop"] > 0 and fine["s_per_crop"] > 0


def test_the_reference_is_last_untimed_and_agrees_with_itself(rows):
    reference = list(rows.values())[-1]
    assert reference["variant"] == "gausslegendre:32" and reference["s_per_crop"] is None
    assert reference["rel_error"] == 0 and reference["spearman"] == pytest.approx(1)


def test_variant_parsing():
    assert study_ig.variant("riemann_trapezoid:20") == ("riemann_trapezoid", 20)
    with pytest.raises(SystemExit, match="expected rule:steps, got 'gausslegendre'"):
        study_ig.variant("gausslegendre")
