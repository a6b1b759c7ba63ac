#!/usr/bin/env python3
"""CPU latency and size of the recipes' architectures: eager PyTorch, TorchScript, ONNX Runtime.

    python tools/benchmark_export.py [--archs sound_classification:student/xvector_small ...]
        [--repeats 20] [--warmup 3]

For each architecture (built from its recipe's YAML; latency does not depend on the weights),
exports TorchScript, ONNX and static int8 ONNX (calibrated on real FSDD clips) to a temporary
folder, then times one 5 s ESC-50 clip (batch 1) on one thread and on all cores: the median of
``--repeats`` calls after ``--warmup``, the variants interleaved so that load on a shared machine
falls on all of them alike (kd_modules.export.latency). Eager PyTorch is the recipe's own
pipeline (SpeechBrain's front end and the model). Prints a Markdown table of milliseconds per
second of audio and the files' sizes; the goals: ONNX fp32 no slower than eager, int8 at least 2x
faster than eager fp32 on one thread.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

from kd_modules.dataio import read_audio
from kd_modules.export import DeployableFrontEnd, DeployedModel, RecipePipeline
from kd_modules.export.formats import example_batch, export_onnx, export_torchscript
from kd_modules.export.latency import interleaved_latency
from kd_modules.export.quantize import quantise
from kd_modules.export.runtime import load_torchscript, onnx_runner, onnx_session, torch_runner
from kd_modules.hparams import load_composed

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "tests" / "samples"
FSDD = SAMPLES / "fsdd" / "free-spoken-digit-dataset" / "recordings"
CLIP = SAMPLES / "esc50" / "ESC-50-master" / "audio" / "4-183992-A-0.flac"
RATE = 16000
SIZE_KEYS = {
    "sound_classification": "n_classes",
    "audio_tagging": "n_outputs",
    "speaker_verification": "n_speakers",
}
DEFAULT_ARCHS = [
    "sound_classification:student/xvector_small",
    "audio_tagging:student/cnn_small",
    "audio_tagging:student/crnn",
    "speaker_verification:student/ecapa_tiny",
    "speaker_verification:student/ecapa_c256",
]
VARIANTS = ("eager", "torchscript", "onnx_fp32", "onnx_int8")


def build(recipe: str, arch: str, folder: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The recipe's front end and model for ``arch`` (seed 0, untrained)."""
    hparams = REPO / "recipes" / recipe / "hparams"
    files = [hparams / "common.yaml", hparams / f"{arch}.yaml", hparams / "kd" / "none.yaml"]
    overrides = {
        "data_folder": str(folder),
        "output_folder": str(folder / "run"),
        SIZE_KEYS[recipe]: 10,
    }
    torch.manual_seed(0)
    composed = load_composed(files, overrides)
    return composed["front_end"], composed["model"].eval()


def export_all(recipe: str, front_end, model, folder: Path) -> dict[str, Path]:
    """TorchScript, ONNX and int8 ONNX files of the architecture in ``folder``."""
    digits = [read_audio(path, RATE) for path in sorted(FSDD.glob("*.flac"))[:24]]
    example = example_batch([digits[0][:6000], digits[1][:4100]])
    scripted = DeployedModel(DeployableFrontEnd(front_end, "stft"), model, recipe)
    deployed = DeployedModel(DeployableFrontEnd(front_end, "conv"), model, recipe)
    files = {
        "torchscript": export_torchscript(scripted, folder / "model.torchscript.pt", example),
        "onnx_fp32": export_onnx(deployed, folder / "model.onnx", example, deployed.output_name),
        "onnx_int8": folder / "model.int8.onnx",
    }
    quantise(files["onnx_fp32"], files["onnx_int8"], digits[8:])
    return files


def measure(recipe: str, front_end, model, files: dict[str, Path], threads: int, args) -> dict:
    """ms per second of audio of every variant with ``threads`` threads, interleaved."""
    runners = {
        "eager": torch_runner(RecipePipeline(front_end, model, recipe)),
        "torchscript": torch_runner(load_torchscript(files["torchscript"])),
        "onnx_fp32": onnx_runner(onnx_session(files["onnx_fp32"], threads)),
        "onnx_int8": onnx_runner(onnx_session(files["onnx_int8"], threads)),
    }
    torch.set_num_threads(threads)
    wav = read_audio(CLIP, RATE).numpy()
    return interleaved_latency(runners, wav, RATE, args.repeats, args.warmup)


def row(name: str, threads: str, latency: dict, sizes: dict) -> str:
    speedup = latency["eager"] / latency["onnx_int8"]
    cells = [f"{latency[v]:.2f}" for v in VARIANTS]
    return (
        f"| {name} | {threads} | {' | '.join(cells)} | {speedup:.1f}x | "
        f"{sizes['onnx_fp32']:.2f} | {sizes['onnx_int8']:.2f} |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--archs",
        nargs="+",
        default=DEFAULT_ARCHS,
        help="recipe:arch pairs (default: the recipes' students)",
    )
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    print(
        f"torch {torch.__version__}, {cores} cores; ms of compute per second of audio "
        f"(median of {args.repeats}, 5 s clip, batch 1); sizes in MB"
    )
    print(
        "| model | threads | eager | TorchScript | ONNX fp32 | ONNX int8 | int8 vs eager "
        "| ONNX MB | int8 MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for entry in args.archs:
        recipe, arch = entry.split(":", 1)
        with tempfile.TemporaryDirectory() as tmp:
            front_end, model = build(recipe, arch, Path(tmp))
            files = export_all(recipe, front_end, model, Path(tmp))
            sizes = {role: path.stat().st_size / 1e6 for role, path in files.items()}
            for label, threads in (("1", 1), (f"all ({cores})", cores)):
                latency = measure(recipe, front_end, model, files, threads, args)
                print(row(f"{recipe} {arch}", label, latency, sizes), flush=True)


if __name__ == "__main__":
    main()
