"""YAML composition and overrides; results.json schema, the Markdown table and the README update."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ruamel.yaml.constructor import DuplicateKeyError

from kd_modules.hparams import compose_yaml, load_composed, parse_recipe_arguments
from kd_modules.results import (
    README_END,
    README_START,
    collect,
    plot_history,
    results_table,
    update_readme,
    write_results,
)


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
        "task": "sound_classification", "dataset": "fsdd", "role": "student", "method": method,
        "arch": "small", "seed": seed, "fold": 1, "metrics": {"accuracy": accuracy},
        "params": 55_000, "macs": 2_000_000, "latency_ms": 1.0, "checkpoint": "ckpt",
        "selection": "best valid", "teacher_fingerprint": "abc", "versions": {},
        "git_commit": "x", "wall_time_s": 1.0, "epoch_time_s": 2.0,
    }  # fmt: skip


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


def test_torchrun_rank_gets_its_own_gpu(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    _, run_opts, _ = parse_recipe_arguments(["a.yaml", "--device", "cuda"])
    assert run_opts["device"] == "cuda:1"
    _, run_opts, _ = parse_recipe_arguments(["a.yaml", "--device", "cpu"])
    assert run_opts["device"] == "cpu"
