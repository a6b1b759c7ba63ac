"""A picture of synthetic pools: per class, one real spectrogram beside one from each synthesiser.

    python -m kd_modules.synthesis.figures EXP_DIR --out synthesis_grid.png [--labels labels.json]

Finds the pools under EXP_DIR (folders with ``manifest.json`` and ``run_record.json``), takes the
first pool of each synthesiser (sorted by path) and its ``real_examples.pt`` (label id -> real
features (T, F), written beside the pool by the recipe), and draws rows = classes, columns =
real + synthesisers, time frames on x and Mel bands on y, one colour scale (and bar) per column.
The title names EXP_DIR's folder (the recipe's dataset), the teacher and each pool's seed, read
from the pool folders as the recipes lay them out (``<teacher>_seed<t>/<synthesiser>/seed<s>``).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from kd_modules.synthesis.pool import MANIFEST, SyntheticPool

if TYPE_CHECKING:
    from matplotlib.figure import Figure

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


def pool_seed(pool: SyntheticPool) -> str:
    """``seed <s>`` from a pool folder named ``seed<s>``, else the folder's name."""
    match = re.fullmatch(r"seed(\d+)", pool.folder.name)
    return f"seed {match.group(1)}" if match else pool.folder.name


def pool_teacher(pool: SyntheticPool) -> str:
    """The teacher folder a pool was synthesised from (``<teacher>_seed<t>``, two levels up)."""
    return pool.folder.parent.parent.name


def colour_range(shown: list[torch.Tensor]) -> tuple[float, float]:
    """The 1st and 99th percentiles of the values in ``shown`` (a column's panels): one scale
    for the column that a few extreme bins do not wash out."""
    values = torch.cat([x.flatten() for x in shown]).float()
    values = values[:: max(1, values.numel() // 100_000)]  # quantile's input size is limited
    low, high = torch.quantile(values, torch.tensor([0.01, 0.99]))
    return float(low), float(high)


def spectrogram_grid(
    columns: dict[str, dict[int, torch.Tensor]],
    class_names: list[str],
    title: str,
    max_classes: int = 10,
) -> Figure:
    """A ``Figure`` of ``columns`` (header -> label id -> features (T, F)) for the first
    ``max_classes`` classes: a row per class, frames on x, Mel bands on y, a colour bar per
    column (real and synthetic features need not share a range)."""
    from matplotlib.figure import Figure

    labels = sorted({label for column in columns.values() for label in column})[:max_classes]
    fig = Figure(figsize=(2.4 * len(columns), 1.4 * len(labels) + 1.2), layout="constrained")
    axes = fig.subplots(len(labels), len(columns), squeeze=False, sharex=True, sharey=True)
    for col, (header, examples) in enumerate(columns.items()):
        axes[0, col].set_title(header, fontsize=9)
        low, high = colour_range([examples[label] for label in labels if label in examples])
        image = None
        for row, label in enumerate(labels):
            axis = axes[row, col]
            if label in examples:
                image = axis.imshow(
                    examples[label].T.numpy(), origin="lower", aspect="auto", vmin=low, vmax=high
                )
            if col == 0:
                name = class_names[label] if label < len(class_names) else str(label)
                axis.set_ylabel(f"{name}\nMel band", fontsize=8)
        axes[-1, col].set_xlabel("time frame")
        if image is not None:
            fig.colorbar(
                image,
                ax=axes[:, col],
                location="bottom",
                shrink=0.8,
                label="log-Mel (teacher input)",
            )
    fig.suptitle(title, fontsize=10)
    return fig


def grid_title(dataset: str, pools: dict[str, SyntheticPool]) -> str:
    """What the grid shows: the dataset, the teacher(s) and the seed(s) of the pools drawn."""
    teachers = sorted({pool_teacher(pool) for pool in pools.values()})
    seeds = sorted({pool_seed(pool) for pool in pools.values()})
    return (
        f"{dataset}: one sample per class from the first pool of each synthesiser\n"
        f"teacher {', '.join(teachers)}; pool {', '.join(seeds)}"
    )


def draw(exp_dir: str | Path, class_names: list[str], max_classes: int = 10) -> Figure | None:
    """The grid ``Figure`` of the pools under ``exp_dir`` (None when it holds none)."""
    pools = find_pools(exp_dir)
    if not pools:
        return None
    columns = {}
    real = next(
        (p.folder / REAL_EXAMPLES for p in pools.values() if (p.folder / REAL_EXAMPLES).is_file()),
        None,
    )
    if real is not None:
        columns["real (validation clip)"] = torch.load(real, map_location="cpu")
    for name, pool in sorted(pools.items()):
        columns[f"{name}\n{pool_seed(pool)}"] = first_per_class(pool)
    title = grid_title(Path(exp_dir).resolve().name, pools)
    return spectrogram_grid(columns, class_names, title, max_classes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exp_dir")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--labels", help="labels.json: class names by id")
    parser.add_argument("--max_classes", type=int, default=10)
    args = parser.parse_args(argv)
    names = json.loads(Path(args.labels).read_text()) if args.labels else []
    fig = draw(args.exp_dir, names, args.max_classes)
    if fig is None:
        print(f"No synthetic pool under {args.exp_dir}: no synthesis grid drawn")
        return
    fig.savefig(args.out, dpi=80)
    print(f"Synthesis grid ({fig.get_suptitle().splitlines()[-1]}) -> {args.out}")


if __name__ == "__main__":
    main()
