"""A picture of synthetic pools: per class, one real spectrogram beside one from each synthesiser.

    python -m kd_modules.synthesis.figures EXP_DIR --out synthesis_grid.png [--labels labels.json]

Finds the pools under EXP_DIR (folders with ``manifest.json`` and ``run_record.json``), takes the
first pool of each synthesiser (sorted by path) and its ``real_examples.pt`` (label id -> real
features (T, F), written beside the pool by the recipe), and draws rows = classes, columns =
real + synthesisers, time on x and Mel bins on y.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from kd_modules.synthesis.pool import MANIFEST, SyntheticPool

REAL_EXAMPLES = "real_examples.pt"


def find_pools(exp_dir: str | Path) -> dict[str, SyntheticPool]:
    """Synthesiser name -> its first pool (sorted by path) under ``exp_dir``."""
    pools: dict[str, SyntheticPool] = {}
    for manifest in sorted(Path(exp_dir).rglob(MANIFEST)):
        record = manifest.parent / "run_record.json"
        if record.is_file():
            name = json.loads(record.read_text())["synthesizer"]["name"]
            pools.setdefault(name, SyntheticPool(manifest.parent))
    return pools


def first_per_class(pool: SyntheticPool) -> dict[int, torch.Tensor]:
    """Label id -> the pool's first sample of that class (T, F)."""
    chosen: dict[int, str] = {}
    for sample_id, entry in sorted(pool.manifest().items()):
        chosen.setdefault(entry["label_id"], sample_id)
    return {label: pool.load(sample_id) for label, sample_id in chosen.items()}


def spectrogram_grid(columns: dict[str, dict[int, torch.Tensor]], class_names: list[str], png,
                     max_classes: int = 10) -> None:  # fmt: skip
    """Draw ``columns`` (title -> label id -> (T, F)) for the first ``max_classes`` classes."""
    from matplotlib.figure import Figure

    labels = sorted({label for column in columns.values() for label in column})[:max_classes]
    fig = Figure(figsize=(2.2 * len(columns), 1.4 * len(labels)), layout="constrained")
    axes = fig.subplots(len(labels), len(columns), squeeze=False)
    for col, (title, examples) in enumerate(columns.items()):
        axes[0, col].set_title(title)
        for row, label in enumerate(labels):
            axis = axes[row, col]
            axis.set_xticks([])
            axis.set_yticks([])
            if label in examples:
                axis.imshow(examples[label].T.numpy(), origin="lower", aspect="auto")
            if col == 0:
                axis.set_ylabel(class_names[label] if label < len(class_names) else str(label))
    fig.savefig(png, dpi=80)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exp_dir")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--labels", help="labels.json: class names by id")
    parser.add_argument("--max_classes", type=int, default=10)
    args = parser.parse_args(argv)
    pools = find_pools(args.exp_dir)
    if not pools:
        print(f"No synthetic pool under {args.exp_dir}: no synthesis grid drawn")
        return
    columns = {}
    real = next((p.folder / REAL_EXAMPLES for p in pools.values()
                 if (p.folder / REAL_EXAMPLES).is_file()), None)  # fmt: skip
    if real is not None:
        columns["real"] = torch.load(real, map_location="cpu")
    columns.update({name: first_per_class(pool) for name, pool in sorted(pools.items())})
    names = json.loads(Path(args.labels).read_text()) if args.labels else []
    spectrogram_grid(columns, names, args.out, args.max_classes)
    print(f"Synthesis grid ({', '.join(columns)}) -> {args.out}")


if __name__ == "__main__":
    main()
