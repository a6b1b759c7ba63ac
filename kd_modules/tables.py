"""Stage 8's Markdown tables: the results table (mean ± std over seeds and folds per dataset,
role, arch and method) and a recipe's data-free comparison (its rows passed in).

Runs are the dicts :func:`kd_modules.results.collect` reads from results.json. A data-free
method whose pools were synthesised with different settings gets a row per set of settings
(:func:`synthesis_variants`, read from each pool's run_record.json), and students distilled from
another teacher than the one reported are flagged (:func:`other_teacher_runs`).
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from kd_modules.run_folder import RUN_RECORD


def _teacher_fingerprints(runs: list[dict]) -> dict[tuple, str]:
    """(dataset, fold) -> the reported teacher's own fingerprint."""
    return {
        (run["dataset"], run["fold"]): run["model_fingerprint"]
        for run in runs
        if run["role"] == "teacher" and run.get("model_fingerprint")
    }


def other_teacher_runs(runs: list[dict]) -> list[dict]:
    """KD students distilled from another teacher than the one the table reports."""
    teachers = _teacher_fingerprints(runs)
    return [
        run
        for run in runs
        if run["role"] != "teacher"
        and run.get("teacher_fingerprint")
        and teachers.get((run["dataset"], run["fold"]), run["teacher_fingerprint"])
        != run["teacher_fingerprint"]
    ]


def _mean_std(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    values = [v * scale for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _count(value: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.2f}{unit}"
    return f"{value:.0f}"


PERCENT_METRICS = {"accuracy", "eer", "micro_auprc", "macro_auprc", "micro_f1"}


def is_percent(name: str) -> bool:
    """A rate shown in %: a PERCENT_METRICS name, alone or after a level (``coarse_micro_f1``)."""
    return any(name == rate or name.endswith(f"_{rate}") for rate in PERCENT_METRICS)


ROLE_ORDER = {"teacher": 0, "student": 1}


def _flat(settings: dict, prefix: str = "") -> dict:
    """Nested settings on one level: ``{"weights": {"bn": 0.1}}`` -> ``{"weights.bn": 0.1}``."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def synthesis_settings(run: dict) -> dict | None:
    """The settings a data-free run's pool was synthesised with, flat: the synthesiser's (its
    steps, learning rate, loss weights...: the ``synthesizer`` of the pool's run_record.json,
    in the pool folder results.json names) and the pool's size (``samples``); None when the
    pool's record is gone."""
    record = Path(run["synthesis"]["pool"]) / RUN_RECORD
    if not record.is_file():
        return None
    synthesizer = json.loads(record.read_text())["synthesizer"]
    return _flat({**synthesizer, "samples": run["synthesis"]["samples"]})


def _show(value) -> str:
    """A setting's value as a row label shows it: text as it is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def _sortable(value) -> tuple:
    """Numbers in numeric order, then anything else by its text (None first)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, value, "")
    return (0 if value is None else 2, 0, json.dumps(value))


def synthesis_variants(runs: list[dict]) -> dict[int, tuple[tuple, str]]:
    """id(run) -> (sort key, row label suffix), e.g. ``" (steps 30)"``, for the data-free runs of
    a (dataset, arch, method) whose pools were synthesised with different settings: each set
    of settings gets its own row, named by the settings that differ (``" (settings unknown)"``
    when a pool's record is gone), so no mean ± std mixes them. Other runs are not listed."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        if run.get("synthesis"):
            groups[(run["dataset"], run["arch"], run["method"])].append(run)
    variants = {}
    for group in groups.values():
        settings = {id(run): synthesis_settings(run) for run in group}
        known = [value for value in settings.values() if value is not None]
        names = sorted({name for value in known for name in value})
        differing = [n for n in names if len({json.dumps(v.get(n)) for v in known}) > 1]
        if not differing and (not known or len(known) == len(group)):
            continue  # one set of settings (or none known at all): one row
        for run in group:
            values = settings[id(run)]
            if values is None:
                variants[id(run)] = ((1,), " (settings unknown)")
                continue
            shown = ", ".join(f"{name} {_show(values.get(name))}" for name in differing)
            key = (0, *(_sortable(values.get(name)) for name in differing))
            variants[id(run)] = (key, f" ({shown})" if shown else "")
    return variants


VARIANTS_NOTE = (
    "A data-free method whose pools were synthesised with different settings has a row per set "
    "of settings, the settings that differ in brackets: their runs are not averaged together."
)


EXPORT_HEADER = ["ONNX ms/s", "int8 ms/s", "ONNX MB", "int8 MB"]
EXPORT_NOTE = (
    "ONNX ms/s, int8 ms/s: ONNX Runtime CPU latency on one thread, in ms per second of audio "
    "(median of stage 9's timed calls), of the fp32 and int8 files; MB: their size on disk "
    "(stage 9, results.json's export block; – where a run is not exported)."
)


def _one_thread_ms(group: list[dict], variant: str) -> str:
    """Mean ± std of the runs' one-thread latency of ``variant`` (``onnx_fp32``/``onnx_int8``)."""
    latencies = [(run.get("export") or {}).get("latency_ms_per_audio_second", {}) for run in group]
    return _mean_std([latency.get("one_thread", {}).get(variant) for latency in latencies])


def _megabytes(group: list[dict], role: str) -> str:
    """The size in MB of the first exported run's ``role`` file (one architecture: one size)."""
    files = [(run.get("export") or {}).get("files", {}) for run in group]
    sizes = [entry[role]["bytes"] for entry in files if role in entry]
    return f"{sizes[0] / 1e6:.2f}" if sizes else "–"


def export_cells(group: list[dict]) -> list[str]:
    """The :data:`EXPORT_HEADER` cells of a row: one-thread ONNX fp32 and int8 latency, sizes."""
    return [
        _one_thread_ms(group, "onnx_fp32"),
        _one_thread_ms(group, "onnx_int8"),
        _megabytes(group, "onnx"),
        _megabytes(group, "onnx_int8"),
    ]


def results_table(runs: list[dict]) -> str:
    """Markdown table: one row per (dataset, role, arch, method), metrics as mean ± std (%);
    data-free runs of one method with different synthesis settings get a row each. When some
    run is exported (stage 9), the exported files' one-thread latency and size follow."""
    flagged = {id(run) for run in other_teacher_runs(runs)}
    variants = synthesis_variants(runs)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    sort_keys = {}
    for run in runs:
        variant_key, variant = variants.get(id(run), ((), ""))
        method = run["method"] + variant + (" †" if id(run) in flagged else "")
        key = (run["dataset"], run["role"], run["arch"], method)
        groups[key].append(run)
        sort_keys[key] = (
            run["dataset"],
            ROLE_ORDER.get(run["role"], 9),
            run["arch"],
            run["method"] != "none",
            run["method"],
            variant_key,
            method,
        )
    metric_names = sorted({name for run in runs for name in run["metrics"]})
    exported = any(run.get("export") for run in runs)
    header = [
        "dataset",
        "role",
        "arch",
        "method",
        "runs",
        *metric_names,
        "params",
        "MACs",
        "CPU ms/clip",
        "epoch s",
        *(EXPORT_HEADER if exported else []),
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    order = sorted(groups, key=sort_keys.__getitem__)
    for key in order:
        group = groups[key]
        cells = [*key, str(len(group))]
        for name in metric_names:
            scale = 100.0 if is_percent(name) else 1.0
            cells.append(_mean_std([run["metrics"].get(name) for run in group], scale))
        cells.append(_count(group[0]["params"]))
        cells.append(_count(group[0]["macs"]))
        cells.append(_mean_std([run["latency_ms"] for run in group]))
        cells.append(_mean_std([run.get("epoch_time_s") for run in group]))
        if exported:
            cells += export_cells(group)
        lines.append("| " + " | ".join(cells) + " |")
    note = "Metrics in % where a rate (accuracy, EER, AUPRC, F1); mean ± std over seeds and folds."
    if exported:
        note += " " + EXPORT_NOTE
    if variants:
        note += "\n\n" + VARIANTS_NOTE
    if flagged:
        note += (
            "\n\n† distilled from another teacher than the one reported (the teacher was "
            "retrained after these students were): retrain them (delete their folders, rerun "
            "stage 5) to compare like with like."
        )
    return "\n".join(lines) + "\n\n" + note + "\n"


def _datafree_row(label: str, group: list[dict], metric: str, diversity: bool) -> str:
    """One row of the data-free table: ``metric`` (%), and the synthesis time and size (and the
    embedding diversity, with ``diversity``) of the pools."""
    pools = [run["synthesis"] for run in group if run.get("synthesis")]
    value = _mean_std([run["metrics"].get(metric) for run in group], 100.0)
    seconds = _mean_std([p["wall_time_s"] for p in pools], digits=0) if pools else "–"
    samples = _mean_std([p["samples"] for p in pools], digits=0) if pools else "–"
    row = f"| {label} | {len(group)} | {value} | {seconds} | {samples} |"
    if diversity:
        measured = [p.get("embedding_diversity") for p in pools]
        row += f" {_mean_std(measured, digits=3) if pools else '–'} |"
    return row


def datafree_tables(
    runs: list[dict],
    rows: Sequence[tuple[str, str, str]],
    metric: str = "accuracy",
    metric_label: str = "accuracy",
) -> str:
    """A data-free comparison per dataset and student arch, when any run is data-free ("" if
    none).

    ``rows`` are the recipe's ``(row label, role, method)``, in table order (the sound recipe's
    are FRAMI's table: teacher, student on real data, KD on real data, DeepInversion, CMI,
    FRAMI without and with hidden-state reuse); a teacher row takes the teacher of every arch,
    the others the students of the table's arch, and rows without runs are left out. Accuracy
    mean ± std over seeds and folds; for data-free rows the synthesis wall time (s) and the
    number of synthetic samples of their pools (mean ± std over the pools), and their
    within-class (or within-tag) embedding diversity when any pool has it measured
    (``kd_modules.stages.datafree.pool_diversity``). ``metric`` (a rate, shown in %) replaces
    accuracy for another task (``coarse_micro_auprc`` for tagging). A data-free method
    whose pools were synthesised with different settings gets a row per set of settings, named
    by those that differ (``synthesis_variants``: "FRAMI (steps 30)", "FRAMI (steps 120)").
    """
    datafree = [run for run in runs if run.get("synthesis")]
    variants = synthesis_variants(runs)
    sections = []
    diversity = any("embedding_diversity" in run["synthesis"] for run in datafree)
    extra = (" diversity |", "---|") if diversity else ("", "")
    for dataset, arch in sorted({(run["dataset"], run["arch"]) for run in datafree}):
        lines = [
            f"### Data-free KD: {dataset}, student {arch}",
            "",
            f"| model | runs | {metric_label} | synthesis s | synthetic samples |{extra[0]}",
            "|---|---|---|---|---|" + extra[1],
        ]
        for label, role, method in rows:
            cells: dict[tuple, list[dict]] = defaultdict(list)
            for run in runs:
                if (run["dataset"], run["role"], run["method"]) == (dataset, role, method) and (
                    role == "teacher" or run["arch"] == arch
                ):
                    cells[variants.get(id(run), ((), ""))].append(run)
            for key, variant in sorted(cells):
                group = cells[(key, variant)]
                lines.append(_datafree_row(label + variant, group, metric, diversity))
        sections.append("\n".join(lines))
    if not sections:
        return ""
    note = (
        f"{metric_label[0].upper() + metric_label[1:]} in % on the real test split, mean ± std "
        "over seeds and folds; data-free students never saw a real training clip."
    )
    if diversity:
        note += (
            " diversity: the teacher's embeddings of a pool's samples, mean pairwise cosine "
            "distance within each class (or tag), averaged (higher: more diverse)."
        )
    if variants:
        note += " " + VARIANTS_NOTE
    return "\n" + "\n\n".join(sections) + "\n\n" + note + "\n"
