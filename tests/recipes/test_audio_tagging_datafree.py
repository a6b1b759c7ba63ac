"""Stage 6 of audio tagging end to end: a FRAMI pool of multi-hot tag sets synthesised from the
tagging teacher, a student distilled on it alone, its results.json and stage 8's tables.

The SONYC-UST stand-in tree (real UrbanSound8K / ESC-50 excerpts) of the tagging recipe's test,
smaller; a tiny teacher, one epoch, two inversion steps: stages 0-8 in one ``run.sh`` call.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import AUDIO_TAGGING, run_recipe

from recipes.audio_tagging.local import make_standin as standin

pytestmark = pytest.mark.slow

SYNTHESIS = "--samples_per_tag 1 --synthesis_batch_size 16 --synthesis_steps 2 --min_frames 40"
SYNTHESIS += " --max_frames 60 --bank_size 64 --max_tags_per_clip 3"


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tagging_datafree")
    tree = root / "release"
    standin.main(["--out", str(tree), "--n_train", "24", "--n_validate", "8"])
    run_recipe(
        AUDIO_TAGGING,
        *("--python", sys.executable, "--data_root", tree, "--device", "cpu"),
        *("--students", "crnn", "--methods", "frami", "--seeds", "1"),
        *("--data_dir", root / "data", "--exp_dir", root / "exp"),
        *("--extra_args", "--number_of_epochs 1 --num_workers 0 --batch_size 8 --teacher_width 32"),
        *("--synthesis_args", SYNTHESIS),
        timeout_s=600,
    )
    return root


def test_pool_holds_multi_hot_tag_sets_with_their_coarse_classes(experiment: Path):
    layout = json.loads((experiment / "data/sonyc_ust/labels.json").read_text())
    n_fine = len(layout["fine"])
    pool = experiment / "exp/sonyc_ust/pool/cnn10_seed1/frami/seed1"
    manifest = json.loads((pool / "manifest.json").read_text())
    assert len(manifest) == n_fine  # one clip led by each fine tag
    coarse_of = {}
    for k, entry in enumerate(layout["fine_taxonomy"]):
        for tag in [*entry["complete"], entry["incomplete"]]:
            if tag is not None:
                coarse_of[tag] = n_fine + k
    for entry in manifest.values():
        targets = entry["targets"]
        assert len(targets) == n_fine + len(layout["coarse"]) and set(targets) <= {0, 1}
        fine = [tag for tag in range(n_fine) if targets[tag]]
        assert 1 <= len(fine) <= 3
        assert {n_fine + c for c, on in enumerate(targets[n_fine:]) if on} == {
            coarse_of[tag] for tag in fine
        }
    record = json.loads((pool / "run_record.json").read_text())
    assert record["synthesizer"]["multi_label"] is True
    assert record["synthesizer"]["weights"]["bce"] == 1.0


def test_datafree_student_has_results_and_stage_8_rows(experiment: Path):
    exp = experiment / "exp/sonyc_ust"
    results = json.loads((exp / "student/crnn/frami/seed1/results.json").read_text())
    assert results["method"] == "frami" and results["task"] == "audio_tagging"
    assert 0.0 <= results["metrics"]["coarse_micro_auprc"] <= 1.0
    assert results["synthesis"]["synthesizer"] == "frami"
    assert results["synthesis"]["samples"] > 0
    assert isinstance(results["synthesis"]["embedding_diversity"], float)
    report = (exp / "RESULTS.md").read_text()
    assert "| frami |" in report  # the results table's data-free row
    assert "### Data-free KD: sonyc_ust, student crnn" in report
    matrix = (exp / "RESULTS_MATRIX.md").read_text()
    assert "| frami |" in matrix and "tagging (sonyc_ust, crnn, cnn10 teacher)" in matrix
