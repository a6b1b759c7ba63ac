"""Stage 8's frame-similarity figure reads without a README (issue 16, item 14): the title names
the clip, the dataset and the runs' seed; each panel its model; frames with their hop in ms on
the axes; one colour scale for every panel and one bar saying what G is. Drawn by
``local/report.py`` from run folders laid out as stage 2/5 writes them (the recipe's own composed
YAML, a tiny teacher and the crnn student, a checkpoint each) on a real UrbanSound8K clip.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from conftest import AUDIO_TAGGING, SAMPLES
from hyperpyyaml import load_hyperpyyaml, resolve_references

from kd_modules.checkpoints import Checkpointer
from kd_modules.hparams import compose_yaml
from kd_modules.results import collect
from recipes.audio_tagging.local import report

HPARAMS = AUDIO_TAGGING / "hparams"
CLIP = SAMPLES / "urbansound8k" / "UrbanSound8K" / "audio" / "fold1" / "24074-1-0-0.flac"
# (role, arch, method, seed): the teacher, the crnn alone / SP / IUSP (seed 1 drawn, not seed 2),
# and KD, which the figure leaves out.
RUNS = [
    ("teacher", "cnn10", "none", 1),
    ("student", "crnn", "none", 1),
    ("student", "crnn", "sp", 1),
    ("student", "crnn", "iusp", 1),
    ("student", "crnn", "iusp", 2),
    ("student", "crnn", "kd", 1),
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(exp: Path, manifests: dict, run: tuple[str, str, str, int]) -> None:
    """A run folder: its composed ``hyperparams.yaml`` (as SpeechBrain saves it), one checkpoint
    of its model (initial weights plus noise seeded by the run's index, so no two runs are alike)
    and results.json."""
    role, arch, method, seed = run
    folder = exp / role / arch / method / f"seed{seed}"
    teacher = exp / "teacher" / "cnn10" / "none" / "seed1"
    overrides = {
        "data_folder": str(exp / "data"),
        "output_folder": str(folder),
        "role": role,
        "n_outputs": 37,
        "seed": seed,
        "teacher_width": 16,
        **({} if method == "none" else {"teacher_folder": str(teacher)}),
    }
    files = [
        HPARAMS / "common.yaml",
        HPARAMS / role / f"{arch}.yaml",
        HPARAMS / "kd" / f"{method}.yaml",
    ]
    folder.mkdir(parents=True)
    text = resolve_references(compose_yaml(files), overrides).getvalue()
    (folder / "hyperparams.yaml").write_text(text)
    model = load_hyperpyyaml(text)["model"]
    generator = torch.Generator().manual_seed(RUNS.index(run))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    Checkpointer(folder / "save", recoverables={"model": model}).save_checkpoint(
        meta={report.SELECTION: 0.5}
    )
    results = {
        "task": "audio_tagging",
        "dataset": "sonyc_ust",
        "role": role,
        "arch": arch,
        "method": method,
        "seed": seed,
        "data_files": {"manifests": manifests},
        "metrics": dict.fromkeys((key for key, _ in report.COLUMNS), 0.5),
        "params": 1000,
        "macs": 1000,
    }
    (folder / "results.json").write_text(json.dumps(results))


def write_experiment(tmp_path: Path) -> Path:
    """The run folders of RUNS under ``exp/sonyc_ust``, their test split two clips long."""
    exp = tmp_path / "exp" / "sonyc_ust"
    manifest = tmp_path / "test.json"
    clip = {"wav": str(CLIP), "audio_filename": CLIP.name}
    manifest.write_text(json.dumps({"a": clip, "b": {**clip, "audio_filename": "later.wav"}}))
    for run in RUNS:
        write_run(exp, {"test": str(manifest)}, run)
    return exp


def test_the_frame_similarity_figure_is_labelled(tmp_path: Path):
    exp = write_experiment(tmp_path)
    fig = report.draw_similarities(collect(exp))
    title = fig.get_suptitle()
    assert "sonyc_ust" in title and CLIP.name in title and "seed 1" in title, title
    colorbars = [axis for axis in fig.axes if axis.get_label() == "<colorbar>"]
    panels = [axis for axis in fig.axes if axis.get_label() != "<colorbar>"]
    assert [axis.get_title(loc="left").split("\n")[0] for axis in panels] == [
        "teacher cnn10",
        "student crnn, alone",
        "student crnn, SP",
        "student crnn, IUSP",
    ]
    # 4 s at 10 ms hops: 401 feature frames; the teacher pools time by 16 (25 frames of 160 ms),
    # the crnn by 2 (200 frames, pooled to the teacher's 25 as IUSP does).
    assert panels[0].get_title(loc="left") == "teacher cnn10\n25 frames"
    assert panels[2].get_title(loc="left").startswith("student crnn, SP\n200→25 frames\nIUSP loss")
    assert {axis.get_xlabel() for axis in panels} == {"frame t′ (160 ms)"}
    assert [axis.get_ylabel() for axis in panels] == ["frame t (160 ms)", "", "", ""]
    assert [bool(axis.get_yticklabels()) for axis in panels] == [True, False, False, False]
    assert all(axis.get_xticklabels() for axis in panels)  # ticks on the outer panels only
    assert {axis.images[0].get_array().shape for axis in panels} == {(25, 25)}

    assert len(colorbars) == 1 and colorbars[0].get_ylabel() == report.SIMILARITY_LABEL
    assert report.SIMILARITY_LABEL == "G[t, t′]: QQᵀ, rows L2-normalised\n(values in [−1, 1])"
    limits = {axis.images[0].get_clim() for axis in panels}
    assert len(limits) == 1  # one colour scale ...
    low, high = limits.pop()
    values = torch.cat([torch.as_tensor(axis.images[0].get_array()).flatten() for axis in panels])
    assert (low, high) == (values.min(), values.max()) and -1 <= low < high <= 1  # ... spanning G

    png, out = tmp_path / "frame_similarity.png", tmp_path / "RESULTS.md"
    report.main([str(exp), "--out", str(out), "--figure", str(png)])  # stage 8 saves it
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert "![frame similarity](frame_similarity.png)" in out.read_text()
