"""A run's training curves: history.json (loss terms and metrics per epoch) drawn with matplotlib.

Stage 8 draws every run's ``curves.png`` beside its history.json (``kd_modules.results.main``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from kd_modules.tables import PERCENT_METRICS, is_percent

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# history.json stats that are no loss terms: rates get the metrics axis, counts are not drawn.
RATE_STATS = PERCENT_METRICS | {"min_dcf"}
COUNT_STATS = {"skipped_clips"}


def _draw_stat(axis: Axes, history: list[dict], name: str, colour: str) -> None:
    """One stat of history.json on ``axis``: train solid, valid dashed."""
    for stage, style in (("train", "-"), ("valid", "--")):
        entries = [e for e in history if e["stage"] == stage and e["stats"].get(name) is not None]
        if entries:
            epochs, values = [e["epoch"] for e in entries], [e["stats"][name] for e in entries]
            axis.plot(
                epochs,
                values,
                style,
                marker="o",
                markersize=3,
                color=colour,
                label=f"{stage} {name}",
            )


def history_figure(history: list[dict], title: str) -> Figure:
    """A run's training curves as a matplotlib ``Figure`` (built without pyplot's global state).

    ``history``: history.json's entries ``{"stage", "epoch", "stats"}``. Left axes: the loss
    terms; right axes: the metrics (rates on a fixed 0-1 scale: on a loss axis an accuracy looks
    flat). Train is solid, valid dashed, one colour per stat. ``title`` names the run.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_metric = fig.subplots(1, 2)
    names = sorted({name for entry in history for name in entry["stats"]} - COUNT_STATS)
    rates = [n for n in names if n in RATE_STATS or is_percent(n)]
    losses = [n for n in names if n not in rates]
    for axis, drawn in ((ax_loss, losses), (ax_metric, rates)):
        for colour, name in enumerate(drawn):
            _draw_stat(axis, history, name, f"C{colour}")
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        if drawn:
            axis.legend(fontsize="small")
    ax_loss.set(title="loss terms", ylabel="loss")
    ax_metric.set(title="metrics", ylabel="rate", ylim=(-0.02, 1.02))
    fig.suptitle(title)
    return fig


def plot_history(history_file: str | Path, png: str | Path, title: str | None = None) -> Figure:
    """Draw a run's history.json to ``png`` and return the ``Figure`` (see ``history_figure``).

    ``title`` names the run (stage 8 passes its folder under exp/, e.g.
    ``fsdd/fold1/student/xvector_small/kd/seed1``); by default the folder holding history_file.
    """
    history = json.loads(Path(history_file).read_text())
    fig = history_figure(history, title or str(Path(history_file).parent))
    fig.savefig(png, dpi=80)
    return fig
