"""Speaker KD on unlabelled audio (``--dataset folder``): the speaker recipe's train.py picks the
UnlabelledSpeakerBrain from data_info.json, the AAM term is never computed, the KD term is the
whole loss (in validation too, which keeps the checkpoint), a student alone is refused in one
line. Real LibriSpeech clips, prepared by the recipe's stage 1; Resemblyzer's GE2E teaches."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
from conftest import SHARED_DATA, SPEAKER_VERIFICATION

from kd_modules.brains import SpeakerBrain, UnlabelledSpeakerBrain
from kd_modules.brains.unlabelled import UnlabelledDataError
from kd_modules.hparams import load_composed
from kd_modules.hub import resemblyzer as hub_resemblyzer
from recipes.speaker_verification import train
from recipes.speaker_verification.local import prepare

HP = SPEAKER_VERIFICATION / "hparams"
LIBRI = SHARED_DATA / "librispeech_subset" / "LibriSpeech"


@pytest.fixture(scope="module")
def folder_data(tmp_path_factory):
    """Stage 1 of --dataset folder over 4 train-clean-100 files; trials over test-other."""
    if not LIBRI.is_dir():
        pytest.skip(f"{LIBRI} is not available")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hub_resemblyzer.pretrained_file()  # skips below when the package is not installed
    base = tmp_path_factory.mktemp("unlabelled")
    (base / "test" / "LibriSpeech").mkdir(parents=True)
    (base / "test" / "LibriSpeech" / "test-other").symlink_to(LIBRI / "test-other")
    for i, src in enumerate(sorted((LIBRI / "train-clean-100").glob("*/*/*.flac"))[:4]):
        (base / "audio" / f"part{i % 2}").mkdir(parents=True, exist_ok=True)
        shutil.copy(src, base / "audio" / f"part{i % 2}" / src.name)
    out = base / "data"
    prepare.main(
        ["--dataset", "folder", "--data_root", str(base / "audio"), "--out_dir", str(out)]
        + ["--test_data_root", str(base / "test"), "--convert", "none"]
    )
    return out


def composed(folder_data, tmp_path, method: str) -> dict:
    return load_composed(
        [HP / "common.yaml", HP / "student/ecapa_tiny.yaml", HP / f"kd/{method}.yaml"],
        {
            "data_folder": str(folder_data),
            "output_folder": str(tmp_path / method),
            "exp_root": str(tmp_path),
            "n_speakers": 0,
            "teacher_embedding_dim": 256,
            "teacher_folder": "none",
            "number_of_epochs": 1,
            "batch_size": 4,
            "num_workers": 0,
        },
    )


def test_the_recipe_picks_the_brain_from_data_info(folder_data, tmp_path):
    assert not train.labelled(str(folder_data))
    assert train.labelled(str(tmp_path))  # no data_info.json: labelled, as before
    info = json.loads((folder_data / "data_info.json").read_text())
    info.pop("labelled")
    (tmp_path / "data_info.json").write_text(json.dumps(info))
    assert train.labelled(str(tmp_path))


def test_a_student_alone_is_refused(folder_data, tmp_path):
    hparams = composed(folder_data, tmp_path, "none")
    brain = train.make_brain(hparams, {"device": "cpu", "noprogressbar": True})
    assert isinstance(brain, UnlabelledSpeakerBrain)
    with pytest.raises(UnlabelledDataError, match="a student alone .* nothing to learn from"):
        brain.on_fit_start()


@pytest.mark.slow  # one KD epoch through the recipe's Brain with the GE2E teacher
def test_kd_terms_are_the_loss_without_labels(folder_data, tmp_path):
    hparams = composed(folder_data, tmp_path, "embedding_cosine")

    def no_aam(*args, **kwargs):
        raise AssertionError("the AAM term needs labels: it must not be computed")

    hparams["aam_loss"] = no_aam
    teacher = hub_resemblyzer.load_resemblyzer_teacher(hparams)
    datasets = train.dataio_prepare(hparams)
    brain = train.make_brain(hparams, {"device": "cpu", "noprogressbar": True}, teacher)
    assert type(brain) is UnlabelledSpeakerBrain and isinstance(brain, SpeakerBrain)
    brain.fit(
        hparams["epoch_counter"],
        datasets["train"],
        datasets["valid"],
        train_loader_kwargs=hparams["train_dataloader_options"],
        valid_loader_kwargs=hparams["eval_dataloader_options"],
    )
    history = json.loads((tmp_path / "embedding_cosine" / "history.json").read_text())
    train_entry = next(e["stats"] for e in history if e["stage"] == "train")
    valid_entry = next(e["stats"] for e in history if e["stage"] == "valid")
    assert train_entry["no_labels"] == 0.0 and train_entry["kd_embedding"] > 0
    assert train_entry["loss"] == pytest.approx(train_entry["kd_embedding"], rel=1e-5)
    assert valid_entry["loss"] == pytest.approx(valid_entry["kd_embedding"], rel=1e-5)
    assert valid_entry["kd_embedding"] > 0 and "accuracy" not in valid_entry
    assert valid_entry["negative_kd_loss"] == pytest.approx(-valid_entry["loss"])
    best = brain.checkpointer.find_checkpoint(max_key="negative_kd_loss")
    assert best is not None and best.meta["epoch"] == 1
