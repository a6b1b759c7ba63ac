"""kd_modules.brains.stage_log without a Brain: the stage's term means, the non-finite stops that
name a term, the intra-epoch checkpoint that continues an epoch's sums, and history.json."""

from __future__ import annotations

import json

import pytest
import speechbrain as sb
import torch
from torch import nn

from kd_modules.brains.stage_log import History, StageLog


def test_means_count_every_logged_term_and_skipped_clips():
    log = StageLog()
    log.reset(3)
    log.log(10, ce=torch.tensor(2.0), kd_sp=torch.tensor(0.5))
    log.log(11, ce=torch.tensor(4.0))

    class Batch:
        skipped, skipped_ids = 2, ["a", "b"]

    log.count_skipped(Batch())
    assert log.means() == {"ce": 3.0, "kd_sp": 0.5} and log.skipped == 2
    assert log.step_terms == {"ce": (1.0, 4.0)}  # KD terms are weighed by the brain
    log.reset(4)
    assert log.means() == {} and log.skipped == 0


def test_a_nonfinite_term_stops_naming_it_with_epoch_and_step():
    log = StageLog()
    with pytest.raises(FloatingPointError, match=r"'kd_sp' is nan \(epoch \?, step 0\)"):
        log.log(0, kd_sp=torch.tensor(float("nan")))
    log.reset(2)
    with pytest.raises(FloatingPointError, match=r"'ce' is inf \(epoch 2, step 7\)"):
        log.log(7, ce=torch.tensor(float("inf")))


def test_a_nonfinite_update_names_the_largest_weighted_term():
    log = StageLog()
    log.reset(1)
    log.log(5, ce=torch.tensor(2.0))
    log.step_terms["kd_kd"] = (1e38, 3e38)
    layer = nn.Linear(2, 2)
    log.check_update(layer.parameters(), 5)  # finite: nothing to say
    with torch.no_grad():
        layer.weight[0, 0] = float("nan")
    message = r"'kd_kd' with weight 1e\+38 made the update non-finite \(epoch 1, step 5;"
    with pytest.raises(FloatingPointError, match=message):
        log.check_update(layer.parameters(), 5)


def test_an_intra_epoch_checkpoint_continues_the_epochs_sums(tmp_path):
    log = StageLog()
    log.reset(2)
    log.log(3, ce=torch.tensor(1.0), kd_kd=torch.tensor(0.25))
    log.skipped = 1
    log.save(tmp_path / "progress.json")

    resumed = StageLog()
    resumed.load(tmp_path / "progress.json", end_of_epoch=False)
    resumed.reset(2)
    assert resumed.resume(2) and resumed.skipped == 1
    resumed.log(4, ce=torch.tensor(3.0))
    assert resumed.means() == {"ce": 2.0, "kd_kd": 0.25}
    assert resumed.elapsed_s() >= json.loads((tmp_path / "progress.json").read_text())["elapsed_s"]

    other_epoch = StageLog()
    other_epoch.load(tmp_path / "progress.json", end_of_epoch=False)
    assert not other_epoch.resume(3) and other_epoch.means() == {}
    finished = StageLog()
    finished.load(tmp_path / "progress.json", end_of_epoch=True)  # the next epoch starts afresh
    assert not finished.resume(2)


def test_history_replaces_a_rerun_epoch_and_skips_the_test_stage(tmp_path):
    path = tmp_path / "history.json"
    history = History(path)
    for epoch in (1, 2):
        history.record(sb.Stage.TRAIN, epoch, 1.5, {"loss": float(epoch)})
        history.record(sb.Stage.VALID, epoch, 0.5, {"loss": epoch + 0.5})
    history.record(sb.Stage.TRAIN, 2, 2.0, {"loss": 9.0})  # epoch 2 again, after a resume
    history.record(sb.Stage.TEST, None, 0.1, {"loss": 0.0})
    entries = [(h["stage"], h["epoch"], h["stats"]["loss"]) for h in json.loads(path.read_text())]
    assert entries == [("train", 1, 1.0), ("valid", 1, 1.5), ("valid", 2, 2.5), ("train", 2, 9.0)]
    History(None).record(sb.Stage.TRAIN, 1, 1.0, {})  # no file: nothing written, no error
