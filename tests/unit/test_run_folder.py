"""A run folder under stress, on real FSDD clips through the recipe's own train.py: a batch of one
clip, an unfinished teacher, two runs at once, other data in the same folder, a KD term that
overflows, kills mid-epoch (term means and wall time stay honest), the intra-epoch checkpoint
default, and a cache build killed mid-split."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import RECIPE, write_fsdd_manifests

from kd_modules.brains import ClassificationBrain
from kd_modules.cache import TeacherCache
from kd_modules.cache_build import build_teacher_cache
from kd_modules.checkpoints import COMPLETE, Checkpointer
from kd_modules.hparams import load_composed
from kd_modules.results import stale_data_runs
from kd_modules.run_folder import (
    FolderBusyError,
    RunRecordMismatch,
    SessionClock,
    folder_lock,
    training_wall_time_s,
)
from kd_modules.tables import other_teacher_runs, results_table
from kd_modules.teacher import Teacher, UnfinishedTeacherError, load_teacher

HP = RECIPE / "hparams"
REPO = RECIPE.parents[1]


def train_args(data: Path, out: Path, arch: str, method: str, *extra: str) -> list[str]:
    """train.py's arguments for a tiny CPU run of the recipe."""
    return [
        str(HP / "common.yaml"),
        str(HP / arch),
        str(HP / "kd" / f"{method}.yaml"),
        "--data_folder",
        str(data),
        "--output_folder",
        str(out),
        "--exp_root",
        str(out.parent),
        "--n_classes",
        "10",
        "--num_workers",
        "0",
        "--device",
        "cpu",
        "--noprogressbar",
        *extra,
    ]


def history(run: Path, stage: str = "train") -> list[dict]:
    return [h for h in json.loads((run / "history.json").read_text()) if h["stage"] == stage]


class Interrupt(Exception):
    """Stands for a kill: raised from inside training at a chosen epoch and step."""


def interrupt_at(monkeypatch, epoch: int, step: int) -> None:
    """Make ClassificationBrain raise ``Interrupt`` in training at (epoch, step)."""
    original = ClassificationBrain.compute_objectives

    def compute_objectives(self, predictions, batch, stage):
        if stage.name == "TRAIN" and self.epoch == epoch and self.step == step:
            raise Interrupt(f"killed at epoch {epoch}, step {step}")
        return original(self, predictions, batch, stage)

    monkeypatch.setattr(ClassificationBrain, "compute_objectives", compute_objectives)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """40 training, 10 validation and 10 test clips of real spoken digits."""
    root = tmp_path_factory.mktemp("run_folder")
    return write_fsdd_manifests(root / "data", {"train": 4, "valid": 1, "test": 1})


@pytest.fixture(scope="module")
def teacher(data, recipe_train) -> Path:
    """A small teacher trained to completion (the student architecture, for speed)."""
    folder = data.parent / "exp" / "teacher"
    recipe_train.main(
        train_args(
            data,
            folder,
            "student/xvector_small.yaml",
            "none",
            "--number_of_epochs",
            "1",
            "--role",
            "teacher",
        )
    )
    return folder


# ----- item 1: a batch of one clip -------------------------------------------------------------
@pytest.mark.slow
def test_batch_of_one_clip_trains_and_evaluates(data, tmp_path, recipe_train):
    """40 train / 10 valid / 10 test clips in batches of 3 leave a last batch of one clip."""
    out = tmp_path / "b1"
    recipe_train.main(
        train_args(
            data,
            out,
            "student/xvector_small.yaml",
            "none",
            "--batch_size",
            "3",
            "--number_of_epochs",
            "1",
        )
    )
    results = json.loads((out / "results.json").read_text())
    assert 0.0 <= results["metrics"]["accuracy"] <= 1.0
    assert history(out)[0]["stats"]["ce"] > 0


# ----- item 4: an unfinished teacher -----------------------------------------------------------
@pytest.mark.slow
def test_kd_refuses_a_teacher_killed_mid_training(data, tmp_path, recipe_train):
    """Stage 2 killed (SIGKILL) during epoch 2 of 3: its epoch-1 checkpoint must not be used."""
    teacher_dir = tmp_path / "teacher"
    args = train_args(
        data,
        teacher_dir,
        "student/xvector_small.yaml",
        "none",
        "--number_of_epochs",
        "3",
        "--skip_test",
        "True",
    )
    proc = subprocess.Popen(
        [sys.executable, str(RECIPE / "train.py"), *args],
        cwd=RECIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if list(teacher_dir.glob(f"save/CKPT*/{COMPLETE}")):
            break  # epoch 1 is checkpointed: kill it during epoch 2
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(history(teacher_dir, "train")) < 3, "the teacher finished before it was killed"

    hparams = load_composed(
        [HP / "common.yaml", HP / "student/xvector_small.yaml", HP / "kd/kd.yaml"],
        {
            "data_folder": str(data),
            "output_folder": str(tmp_path / "s"),
            "n_classes": 10,
            "teacher_folder": str(teacher_dir),
        },
    )
    with pytest.raises(UnfinishedTeacherError, match="has not finished training") as error:
        load_teacher(hparams)
    assert "--allow_unfinished_teacher true" in str(error.value)
    assert load_teacher({**hparams, "allow_unfinished_teacher": True}).fingerprint

    # the teacher's run is resumed to the end: now it is served
    recipe_train.main(args)
    assert len(history(teacher_dir, "train")) == 3
    assert load_teacher(hparams).fingerprint


@pytest.mark.slow
def test_report_flags_students_of_another_teacher(teacher, data, tmp_path, recipe_train):
    student = tmp_path / "student"
    recipe_train.main(
        train_args(
            data,
            student,
            "student/xvector_small.yaml",
            "kd",
            "--number_of_epochs",
            "1",
            "--teacher_folder",
            str(teacher),
        )
    )
    teacher_run = json.loads((teacher / "results.json").read_text())
    student_run = json.loads((student / "results.json").read_text())
    assert student_run["teacher_fingerprint"] == teacher_run["model_fingerprint"]
    runs = [{**teacher_run, "run_dir": "t"}, {**student_run, "run_dir": "s"}]
    assert other_teacher_runs(runs) == []
    assert "†" not in results_table(runs)
    retrained = {**teacher_run, "model_fingerprint": "0" * 16, "run_dir": "t"}
    assert other_teacher_runs([retrained, runs[1]]) == [runs[1]]
    table = results_table([retrained, runs[1]])
    assert "| kd † |" in table and "distilled from another teacher" in table


# ----- item 5: two runs at once ----------------------------------------------------------------
@pytest.mark.slow
def test_second_run_in_a_locked_folder_stops_naming_the_holder(data, tmp_path, recipe_train):
    out = tmp_path / "busy"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom kd_modules.run_folder import folder_lock\n"
            "with folder_lock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(60)",
            str(out),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderBusyError, match=f"in use by pid {holder.pid} ") as error:
            recipe_train.main(train_args(data, out, "student/xvector_small.yaml", "none"))
        assert "overwrite each other's checkpoints" in str(error.value)
        assert not (out / "log.txt").exists(), "the second run must stop before writing there"
    finally:
        holder.kill()
        holder.wait()
    with folder_lock(out):  # released by the kernel when its holder died
        pass


def test_lock_holder_names_its_global_rank(tmp_path, monkeypatch):
    """Under torchrun the holder (the global main process, or a cache rank) says which rank it
    is: on several nodes the pid and host alone do not say which process of the job it is."""
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    with folder_lock(tmp_path), pytest.raises(FolderBusyError) as error:
        with folder_lock(tmp_path):  # another open file: flock refuses it as another process
            pass
    assert f"in use by pid {os.getpid()} on " in str(error.value)
    assert " global rank 3 of 4 since " in str(error.value)


def test_filesystem_without_flock_runs_the_block_unlocked_with_a_warning(
    tmp_path, monkeypatch, caplog
):
    """Lustre mounted ``noflock`` (or NFS without lockd) fails flock with ENOSYS / ENOLCK: the
    run goes on, unlocked, and says so, rather than a traceback that no option avoids."""
    from kd_modules import run_folder

    def no_flock(handle, operation):
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(run_folder.fcntl, "flock", no_flock)
    ran = []
    with caplog.at_level("WARNING", logger="kd_modules.run_folder"), folder_lock(tmp_path):
        ran.append(True)
    assert ran == [True]
    assert f"The filesystem of {tmp_path} has no flock" in caplog.text
    assert "the run folder is not locked" in caplog.text
    assert (tmp_path / ".lock").read_text().startswith(f"pid {os.getpid()} on ")


def test_other_flock_errors_are_not_taken_for_a_missing_lock(tmp_path, monkeypatch):
    from kd_modules import run_folder

    def failing(handle, operation):
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    monkeypatch.setattr(run_folder.fcntl, "flock", failing)
    with pytest.raises(OSError, match="Bad file descriptor"), folder_lock(tmp_path):
        pytest.fail("the block must not run")


# ----- item 6: other data in the same run folder -----------------------------------------------
@pytest.mark.slow
def test_run_folder_refuses_other_data(tmp_path, recipe_train):
    data = write_fsdd_manifests(tmp_path / "data" / "fold1", {"train": 2, "valid": 1, "test": 1})
    (data.parent / ".done").write_text(json.dumps({"split": "seeded", "data_root": "/demo"}))
    out = tmp_path / "exp" / "student"
    args = train_args(data, out, "student/xvector_small.yaml", "none", "--number_of_epochs", "1")
    recipe_train.main(args)
    results = json.loads((out / "results.json").read_text())
    runs = [{**results, "run_dir": str(out)}]
    assert stale_data_runs(runs) == []

    # stage 1 re-prepares the same folder from other data (the full dataset after the demo)
    write_fsdd_manifests(data, {"train": 3, "valid": 1, "test": 1})
    (data.parent / ".done").write_text(json.dumps({"split": "official", "data_root": "/full"}))
    with pytest.raises(RunRecordMismatch) as error:
        recipe_train.main(args)
    message = str(error.value)
    assert "data.manifests.train changed" in message
    assert "data.prepare.data_root: '/demo' -> '/full'" in message
    assert "--exp_dir" in message
    with pytest.raises(RunRecordMismatch):  # evaluation alone is refused too
        recipe_train.main([*args, "--test_only"])
    assert stale_data_runs(runs) == [str(out)]


# ----- item 7: a KD term that overflows --------------------------------------------------------
@pytest.mark.slow
def test_non_finite_kd_term_is_named_with_its_weight(teacher, data, tmp_path, recipe_train):
    """τ = 4: the term is 16·KL, so a weight of 1e38 overflows float32 (3.4e38) at step 1."""
    with pytest.raises(FloatingPointError) as error:
        recipe_train.main(
            train_args(
                data,
                tmp_path / "s",
                "student/xvector_small.yaml",
                "kd",
                "--teacher_folder",
                str(teacher),
                "--alpha",
                "1e38",
                "--tau",
                "4",
            )
        )
    message = str(error.value)
    assert message.startswith("Loss term 'kd_kd' with weight 1e+38 made the update non-finite")
    assert "epoch 1, step 1;" in message, message


# ----- item 15: honest bookkeeping after a kill ------------------------------------------------
@pytest.mark.slow
def test_resumed_epoch_logs_term_means_of_the_whole_epoch(
    data, tmp_path, recipe_train, monkeypatch
):
    """CE-only: the epoch's ``ce`` mean equals SpeechBrain's ``loss`` even across a resume."""
    out = tmp_path / "resumed"
    args = train_args(
        data,
        out,
        "student/xvector_small.yaml",
        "none",
        "--number_of_epochs",
        "1",
        "--batch_size",
        "8",
        "--ckpt_interval_minutes",
        "0",
        "--ckpt_interval_steps",
        "1",
    )
    interrupt_at(monkeypatch, epoch=1, step=4)
    with pytest.raises(Interrupt):
        recipe_train.main(args)
    monkeypatch.undo()
    recipe_train.main(args)
    stats = history(out)[0]["stats"]
    assert stats["ce"] == pytest.approx(stats["loss"], rel=1e-5)


@pytest.mark.slow
def test_wall_time_counts_a_session_killed_by_sigkill(tmp_path):
    code = (
        "import os, signal, sys, time\nfrom kd_modules.run_folder import SessionClock\n"
        "with SessionClock(sys.argv[1], heartbeat_s=0.1):\n"
        "    time.sleep(1.5)\n    os.kill(os.getpid(), signal.SIGKILL)"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, check=False)
    killed = training_wall_time_s(tmp_path)
    assert 1.3 <= killed <= 2.5
    with SessionClock(tmp_path):
        time.sleep(0.3)
    sessions = json.loads((tmp_path / "train_sessions.json").read_text())
    assert [s["finished"] for s in sessions] == [False, True]
    assert training_wall_time_s(tmp_path) == pytest.approx(killed + 0.3, abs=0.2)


@pytest.mark.slow
def test_wall_time_of_a_training_killed_by_sigkill_is_the_time_it_ran(data, tmp_path):
    """train.py killed (SIGKILL) 2.5 s into its session: train_sessions.json holds about that, not
    the 1e-6 s of the session's first write (the heartbeat beats during training, every
    ``HEARTBEAT_S``, the shipped default)."""
    out = tmp_path / "killed"
    args = train_args(
        data,
        out,
        "student/xvector_small.yaml",
        "none",
        "--number_of_epochs",
        "100",
        "--skip_test",
        "True",
    )
    proc = subprocess.Popen(
        [sys.executable, str(RECIPE / "train.py"), *args],
        cwd=RECIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sessions = out / "train_sessions.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not sessions.is_file():
        time.sleep(0.02)
    started = time.time()
    time.sleep(2.5)
    running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ran = time.time() - started
    assert running, "train.py ended before it was killed"
    [session] = json.loads(sessions.read_text())
    assert not session["finished"]
    assert 1.0 <= session["elapsed_s"] <= ran + 0.5, (session, ran)


# ----- item 16: intra-epoch checkpoints by default ---------------------------------------------
def test_intra_epoch_checkpoints_are_on_by_default(data, tmp_path, recipe_train):
    hparams = load_composed(
        [HP / "common.yaml", HP / "student/xvector_small.yaml", HP / "kd/none.yaml"],
        {"data_folder": str(data), "output_folder": str(tmp_path), "n_classes": 10},
    )
    brain = recipe_train.make_brain(hparams, {"device": "cpu"})
    assert 0 < brain.ckpt_interval_minutes <= 30
    assert "ckpt_interval_minutes" in (RECIPE / "README.md").read_text()


# ----- item 17: a cache build killed mid-split -------------------------------------------------
@pytest.mark.slow
def test_cache_build_killed_mid_split_leaves_no_finished_cache(
    teacher, tmp_path, data, recipe_train
):
    model = Teacher.from_experiment(teacher, max_key="accuracy")
    hparams = load_composed(
        [HP / "common.yaml", HP / "student/xvector_small.yaml", HP / "kd/kd.yaml"],
        {
            "data_folder": str(data),
            "output_folder": str(tmp_path),
            "n_classes": 10,
            "teacher_folder": str(teacher),
        },
    )
    examples = [(item["id"], item["sig"]) for item in recipe_train.dataio_prepare(hparams)["train"]]
    replay = hparams["view_replay"]

    signals = dict(examples)

    def build(ids, load=signals.__getitem__):
        return build_teacher_cache(
            model, ids, load, replay.features, replay.make_view, folder, {}, shard_size=4
        )

    def killed_midway(utt_id):
        if utt_id == examples[6][0]:
            raise Interrupt("killed while caching")
        return signals[utt_id]

    folder = tmp_path / "cache"
    with pytest.raises(Interrupt):
        build(list(signals), killed_midway)
    (folder / ".shard-r0-000001.safetensors.1234abcd.tmp").write_bytes(b"half a shard")
    writing = folder / ".shard-r1-000000.safetensors.5678ef01.tmp"  # rank 1 (another node) now
    writing.write_bytes(b"a shard being written")
    with pytest.raises(FileNotFoundError, match="No finished teacher cache"):
        TeacherCache(folder)
    build([utt for utt, _ in examples[:6]])  # resumes: keeps the finished shard, drops the tmp
    assert list(folder.glob("*.tmp")) == [writing]  # rank 0 removed its own, not rank 1's
    with pytest.raises(KeyError, match="lacks 34 of the 40 utterances"):
        TeacherCache(folder).check_covers(data / "train.json")


@pytest.mark.slow
def test_checkpoint_half_written_by_a_kill_is_never_loaded(teacher, tmp_path):
    """SpeechBrain writes CKPT.yaml before the weights: a kill mid-save leaves a folder that
    looks like the newest checkpoint but holds a truncated model file."""
    model = Teacher.from_experiment(teacher, max_key="accuracy").model
    checkpointer = Checkpointer(tmp_path / "save", recoverables={"model": model})
    good = checkpointer.save_checkpoint(meta={"accuracy": 0.5})
    partial = tmp_path / "save" / "CKPT+9999-killed"
    partial.mkdir()
    (partial / "CKPT.yaml").write_text("accuracy: 0.9\nend-of-epoch: true\nunixtime: 9e9\n")
    data = (good.path / "model.ckpt").read_bytes()
    (partial / "model.ckpt").write_bytes(data[: len(data) // 2])
    assert checkpointer.find_checkpoint(max_key="accuracy").path == good.path
    assert checkpointer.recover_if_possible().path == good.path
    checkpointer.save_and_keep_only(meta={"accuracy": 0.6}, max_keys=["accuracy"])
    assert not partial.exists(), "the next save removes the half-written checkpoint"


# ----- issue 16, item 9: stage 6 again with other synthesis settings ----------------------------
@pytest.mark.slow
def test_a_pool_asked_with_other_settings_stops_in_one_line(
    teacher, data, tmp_path, capsys, monkeypatch
):
    """synthesize.py once with 2 inversion steps, then with 3: one line on stderr naming the
    change and the way out, exit status 1, no traceback (was: a RunRecordMismatch traceback
    saying the pool was "trained on other data or from another teacher")."""
    from kd_modules.hparams import run_main
    from recipes.sound_classification import synthesize

    pool = tmp_path / "pool"
    args = [
        str(HP / "common.yaml"),
        str(HP / "student/xvector_small.yaml"),
        str(HP / "synthesis/deepinversion.yaml"),
        str(HP / "kd/deepinversion.yaml"),
        "--data_folder",
        str(data),
        "--output_folder",
        str(tmp_path / "student"),
        "--exp_root",
        str(tmp_path),
        "--n_classes",
        "10",
        "--num_workers",
        "0",
        "--device",
        "cpu",
        "--noprogressbar",
        "--teacher_folder",
        str(teacher),
        "--pool_folder",
        str(pool),
        "--samples_per_class",
        "1",
        "--synthesis_batch_size",
        "10",
        "--min_frames",
        "20",
        "--max_frames",
        "30",
        "--number_of_epochs",
        "1",
        "--skip_test",
        "True",
    ]
    synthesize.main([*args, "--synthesis_steps", "2"])
    capsys.readouterr()
    monkeypatch.setattr("sys.argv", ["synthesize.py"])
    with pytest.raises(SystemExit) as stop:
        run_main(synthesize.main, [*args, "--synthesis_steps", "3"])
    err = capsys.readouterr().err
    assert stop.value.code == 1 and "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith(f"synthesize.py: The pool {pool} was synthesised with other settings")
    assert "(synthesizer.steps: 2 -> 3)" in err and "Delete the folder" in err
