"""YAML composition and overrides; results.json schema, the Markdown table and the README update."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from ruamel.yaml.constructor import DuplicateKeyError

from kd_modules import results, tables
from kd_modules.curves import plot_history
from kd_modules.hparams import (
    HparamsError,
    compose_yaml,
    load_composed,
    parse_recipe_arguments,
    run_main,
)
from kd_modules.results import (
    README_END,
    README_START,
    collect,
    update_readme,
    write_results,
)
from kd_modules.tables import results_table
from recipes.sound_classification.local import report as sound_report


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_composition_references_across_files_and_overrides(tmp_path):
    base = _write(tmp_path / "common.yaml", "n_mels: 40\nlr: 0.1\nmodel_in: !ref <n_mels>\n")
    arch = _write(tmp_path / "arch.yaml", "width: !ref <n_mels> * 2\n")
    hparams = load_composed([base, arch], {"n_mels": 64})
    assert hparams["model_in"] == 64 and hparams["width"] == 128
    with pytest.raises(Exception, match="lrr"):
        load_composed([base, arch], {"lrr": 0.5})  # a misspelt override is an error


def test_duplicate_key_across_files_is_an_error(tmp_path):
    a = _write(tmp_path / "a.yaml", "tau: 4\n")
    b = _write(tmp_path / "b.yaml", "tau: 2\n")
    with pytest.raises(DuplicateKeyError):
        load_composed([a, b])
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        compose_yaml([a, tmp_path / "missing.yaml"])


def test_parse_recipe_arguments_splits_files_run_options_and_overrides():
    files, run_opts, overrides = parse_recipe_arguments(
        ["a.yaml", "b.yaml", "--device", "cpu", "--tau", "3"]
    )
    assert files == ["a.yaml", "b.yaml"]
    assert run_opts["device"] == "cpu"
    assert "tau: 3" in overrides


def _run(seed: int, accuracy: float, method: str = "kd") -> dict:
    return {
        "task": "sound_classification",
        "dataset": "fsdd",
        "role": "student",
        "method": method,
        "arch": "small",
        "seed": seed,
        "fold": 1,
        "metrics": {"accuracy": accuracy},
        "params": 55_000,
        "macs": 2_000_000,
        "latency_ms": 1.0,
        "checkpoint": "ckpt",
        "selection": "best valid",
        "teacher_fingerprint": "abc",
        "versions": {},
        "git_commit": "x",
        "wall_time_s": 1.0,
        "epoch_time_s": 2.0,
    }


def test_a_key_given_twice_takes_its_last_value():
    """run.sh passes --extra_args before --teacher_args: the teacher's epochs win, no YAML error."""
    _, run_opts, overrides = parse_recipe_arguments(
        [
            "a.yaml",
            "--number_of_epochs",
            "30",
            "--lr",
            "0.1",
            "--test_only",
            "--number_of_epochs",
            "40",
        ]
    )
    assert yaml.safe_load(overrides) == {"number_of_epochs": 40, "lr": 0.1}
    assert run_opts["test_only"] is True


def test_results_table_mean_std_over_seeds(tmp_path):
    for seed, acc in ((1, 0.80), (2, 0.90)):
        write_results(tmp_path / f"kd/seed{seed}/results.json", _run(seed, acc))
    write_results(tmp_path / "none/seed1/results.json", _run(1, 0.5, "none"))
    runs = collect(tmp_path)
    assert len(runs) == 3
    table = results_table(runs)
    kd_row = next(line for line in table.splitlines() if "| kd |" in line)
    assert "85.00 ± 7.07" in kd_row and "| 2 |" in kd_row and "55.00k" in kd_row
    rows = [line for line in table.splitlines() if line.startswith("| fsdd")]
    assert "| none |" in rows[0], "the student alone comes before KD methods"


def test_write_results_rejects_incomplete_schema(tmp_path):
    run = _run(1, 0.5)
    del run["macs"]
    with pytest.raises(ValueError, match="macs"):
        write_results(tmp_path / "results.json", run)


def test_update_readme_and_plot(tmp_path):
    readme = _write(tmp_path / "README.md", f"intro\n{README_START}\nold\n{README_END}\nend\n")
    update_readme(readme, "| new |\n")
    assert readme.read_text() == f"intro\n{README_START}\n| new |\n{README_END}\nend\n"
    history = [
        {"stage": "train", "epoch": 1, "time_s": 1.0, "stats": {"loss": 2.0, "ce": 1.5}},
        {"stage": "valid", "epoch": 1, "time_s": 0.1, "stats": {"accuracy": 0.4}},
        {"stage": "train", "epoch": 2, "time_s": 1.0, "stats": {"loss": 1.0, "ce": 0.9}},
        {"stage": "valid", "epoch": 2, "time_s": 0.1, "stats": {"accuracy": 0.6}},
    ]
    (tmp_path / "history.json").write_text(json.dumps(history))
    plot_history(tmp_path / "history.json", tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


HISTORY = [
    {
        "stage": stage,
        "epoch": epoch,
        "time_s": 1.0,
        "stats": {
            "loss": 3.0 / epoch + (stage == "valid"),
            "ce": 2.0 / epoch,
            "kd": 1.0 / epoch,
            **({"accuracy": 0.2 * epoch, "skipped_clips": 1} if stage == "valid" else {}),
        },
    }
    for epoch in (1, 2, 3)
    for stage in ("train", "valid")
]


def test_plot_history_draws_metrics_on_their_own_axis_and_names_the_run(tmp_path):
    (tmp_path / "history.json").write_text(json.dumps(HISTORY))
    run = "fsdd/fold1/student/xvector_small/kd/seed1"
    fig = plot_history(tmp_path / "history.json", tmp_path / "curves.png", title=run)
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert fig.get_suptitle() == run
    lines = {line.get_label(): (axis, line) for axis in fig.axes for line in axis.get_lines()}
    losses = {f"{stage} {name}" for stage in ("train", "valid") for name in ("loss", "ce", "kd")}
    assert set(lines) == losses | {"valid accuracy"}  # a count (skipped_clips) is not drawn
    loss_axis, accuracy_axis = lines["train loss"][0], lines["valid accuracy"][0]
    assert accuracy_axis is not loss_axis
    assert all(lines[label][0] is loss_axis for label in losses)
    assert list(lines["valid accuracy"][1].get_ydata()) == pytest.approx([0.2, 0.4, 0.6])
    low, high = accuracy_axis.get_ylim()
    assert low <= 0 and high >= 1 and high < 1.1  # the whole rate scale, nothing more


def test_stage8_titles_each_curve_with_its_run_folder(tmp_path, monkeypatch):
    run_dir = tmp_path / "exp/fsdd/fold1/student/small/kd/seed1"
    write_results(run_dir / "results.json", _run(1, 0.8))
    (run_dir / "history.json").write_text(json.dumps(HISTORY))
    drawn = []
    monkeypatch.setattr(results, "plot_history", lambda *args: drawn.append(args))
    results.main([str(tmp_path / "exp/fsdd"), "--out", str(tmp_path / "RESULTS.md")])
    assert drawn == [
        (run_dir / "history.json", run_dir / "curves.png", "fsdd/fold1/student/small/kd/seed1")
    ]


# ----- data-free pools synthesised with different settings (issue 16, item 4) -------------------
def _datafree_run(tmp_path: Path, seed: int, accuracy: float, steps: int, wall_s: float) -> None:
    """A FRAMI student's results.json and its pool's run_record.json (as synthesize.py leaves
    them), the pool synthesised with ``--synthesis_steps steps``."""
    pool = tmp_path / f"exp/fsdd/fold1/pool/large_seed1/frami/seed{seed}"
    pool.mkdir(parents=True)
    synthesizer = {
        "name": "frami",
        "n_mels": 40,
        "steps": steps,
        "lr": 0.25,
        "weights": {"ce": 1.0, "bn": 0.005},
        "precision": "fp32",
    }
    record = {"teacher_fingerprint": "abc", "synthesizer": synthesizer, "plan": []}
    (pool / "run_record.json").write_text(json.dumps(record))
    run = {
        **_run(seed, accuracy, "frami"),
        "synthesis": {
            "synthesizer": "frami",
            "pool": str(pool),
            "samples": 200,
            "wall_time_s": wall_s,
            "manifest_sha256": "0" * 64,
        },
    }
    write_results(tmp_path / f"exp/fsdd/fold1/student/small/frami/seed{seed}/results.json", run)


def _rows(table: str, first_cell: str) -> list[list[str]]:
    """The cells of the table rows whose first cell starts with ``first_cell``."""
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in table.splitlines()
        if line.startswith("| ")
    ]
    return [row for row in rows if row[0].startswith(first_cell)]


def test_datafree_pools_of_other_synthesis_settings_get_a_row_each(tmp_path):
    """--synthesis_steps 30 for seed 1 and 120 for seed 2 were averaged into one FRAMI row
    (synthesis s "39 ± 33"); each setting now has its row, the differing setting named."""
    _datafree_run(tmp_path, 1, 0.40, steps=120, wall_s=62.0)
    _datafree_run(tmp_path, 2, 0.30, steps=30, wall_s=15.0)
    runs = collect(tmp_path / "exp")
    datafree = sound_report.datafree_section(runs)
    assert _rows(datafree, "FRAMI") == [
        ["FRAMI (steps 30)", "1", "30.00", "15", "200"],
        ["FRAMI (steps 120)", "1", "40.00", "62", "200"],
    ]
    assert "not averaged together" in datafree
    table = results_table(runs)
    methods = [row[3] for row in _rows(table, "fsdd")]
    assert methods == ["frami (steps 30)", "frami (steps 120)"]
    assert "not averaged together" in table


def test_datafree_pools_of_the_same_settings_share_a_row(tmp_path):
    _datafree_run(tmp_path, 1, 0.40, steps=120, wall_s=62.0)
    _datafree_run(tmp_path, 2, 0.30, steps=120, wall_s=60.0)
    runs = collect(tmp_path / "exp")
    datafree = sound_report.datafree_section(runs)
    assert _rows(datafree, "FRAMI") == [["FRAMI", "2", "35.00 ± 7.07", "61 ± 1", "200 ± 0"]]
    assert "not averaged together" not in datafree + results_table(runs)


def test_a_datafree_run_whose_pool_record_is_gone_is_not_averaged_in(tmp_path):
    _datafree_run(tmp_path, 1, 0.40, steps=120, wall_s=62.0)
    _datafree_run(tmp_path, 2, 0.30, steps=120, wall_s=60.0)
    (tmp_path / "exp/fsdd/fold1/pool/large_seed1/frami/seed2/run_record.json").unlink()
    rows = _rows(sound_report.datafree_section(collect(tmp_path / "exp")), "FRAMI")
    assert [row[:3] for row in rows] == [
        ["FRAMI", "1", "40.00"],
        ["FRAMI (settings unknown)", "1", "30.00"],
    ]


def test_datafree_tables_show_the_rows_a_recipe_passes_in(tmp_path):
    """The library knows no dataset's method names: the rows, their labels and their order are
    the caller's, and a method without a row is not in the table."""
    _datafree_run(tmp_path, 1, 0.40, steps=120, wall_s=62.0)
    write_results(tmp_path / "exp/fsdd/fold1/student/small/kd/seed1/results.json", _run(1, 0.5))
    rows = (("pool-trained", "student", "frami"), ("distilled", "student", "kd"))
    table = tables.datafree_tables(collect(tmp_path / "exp"), rows)
    labelled = [row[:3] for row in _rows(table, "")][1:]  # the header row first
    assert labelled == [["pool-trained", "1", "40.00"], ["distilled", "1", "50.00"]]
    alone = tables.datafree_tables(collect(tmp_path / "exp"), rows[:1])
    assert "distilled" not in alone and "KD on real data" not in alone


def test_sound_stage8_adds_its_datafree_table_to_results_and_readme(tmp_path):
    """The sound recipe's stage 8 (local/report.py) writes RESULTS.md and the README's block
    with the data-free table in its rows after the library's table; the library's own stage 8
    (python -m kd_modules.results) writes none."""
    _datafree_run(tmp_path, 1, 0.40, steps=120, wall_s=62.0)
    readme = _write(tmp_path / "README.md", f"intro\n{README_START}\nold\n{README_END}\n")
    exp, out = str(tmp_path / "exp/fsdd"), tmp_path / "RESULTS.md"
    sound_report.main([exp, "--out", str(out), "--readme", str(readme), "--title", "FSDD"])
    written = out.read_text()
    assert written.startswith("# FSDD\n\n| dataset |")
    assert "### Data-free KD: fsdd, student small" in written
    assert _rows(written, "FRAMI") == [["FRAMI", "1", "40.00", "62", "200"]]
    block = readme.read_text().split(README_START)[1].split(README_END)[0]
    assert written.split("\n\n", 1)[1] in block
    results.main([exp, "--out", str(out)])
    assert "Data-free KD" not in out.read_text()


def test_torchrun_rank_gets_its_own_gpu(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    _, run_opts, _ = parse_recipe_arguments(["a.yaml", "--device", "cuda"])
    assert run_opts["device"] == "cuda:1"
    _, run_opts, _ = parse_recipe_arguments(["a.yaml", "--device", "cpu"])
    assert run_opts["device"] == "cpu"


# ----- override checks: one-line HparamsError messages -------------------------------------------
COMMON = "number_of_epochs: 15\nlr: 0.002\nskip_test: False\ndataset: fsdd\nn_mels: 40\n"


def _composition(tmp_path: Path) -> list[Path]:
    """common.yaml + a file whose keys point into it (so !ref keeps working after a check)."""
    return [
        _write(tmp_path / "common.yaml", COMMON),
        _write(tmp_path / "kd.yaml", "epochs_seen: !ref <number_of_epochs>\ntau: 4.0\n"),
    ]


def test_misspelt_override_names_the_closest_keys(tmp_path):
    with pytest.raises(HparamsError) as error:
        load_composed(_composition(tmp_path), "numbr_of_epochs: 2\n")
    expected = "unknown hyperparameter --numbr_of_epochs (closest valid names: number_of_epochs)"
    assert str(error.value) == expected


def test_unknown_override_without_a_close_key_names_the_files(tmp_path):
    files = _composition(tmp_path)
    with pytest.raises(HparamsError) as error:
        load_composed(files, {"zzz": 1})
    assert str(error.value) == (
        f"unknown hyperparameter --zzz (no similar name among the 7 keys of {files[0]}, {files[1]})"
    )


@pytest.mark.parametrize(
    ("override", "shown", "expected", "default"),
    [
        ("number_of_epochs: two", "--number_of_epochs 'two'", "an integer", 15),
        ("number_of_epochs: 2.5", "--number_of_epochs 2.5", "an integer", 15),
        ("number_of_epochs: True", "--number_of_epochs True", "an integer", 15),
        ("lr: fast", "--lr 'fast'", "a number", 0.002),
        ("skip_test: 1", "--skip_test 1", "True or False", False),
        ("tau: yes", "--tau 'yes'", "a number", 4.0),
    ],
)
def test_override_of_the_wrong_type_names_key_and_value(
    tmp_path, override, shown, expected, default
):
    with pytest.raises(HparamsError) as error:
        load_composed(_composition(tmp_path), override)
    assert str(error.value) == (
        f"invalid hyperparameter {shown}: expected {expected} (its YAML default is {default})"
    )


def test_overrides_that_fit_their_defaults_are_applied(tmp_path):
    overrides = "number_of_epochs: 3\nlr: 1\ntau: 1e-1\nskip_test: True\ndataset: 7\n"
    hparams = load_composed(_composition(tmp_path), overrides + "n_mels: !ref <number_of_epochs>\n")
    assert (hparams["number_of_epochs"], hparams["epochs_seen"], hparams["n_mels"]) == (3, 3, 3)
    assert (hparams["lr"], hparams["tau"], hparams["skip_test"]) == (1, 0.1, True)
    assert hparams["dataset"] == 7  # a string key takes what YAML reads


def test_run_main_prints_one_line_and_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["train.py"])
    files = [str(path) for path in _composition(tmp_path)]

    def main(argv: list[str]) -> None:
        load_composed(files, {"lrr": 0.1})

    with pytest.raises(SystemExit) as stop:
        run_main(main, [])
    assert stop.value.code == 2
    assert capsys.readouterr().err == (
        "train.py: unknown hyperparameter --lrr (closest valid names: lr)\n"
    )
