"""The audio-tagging report's headline figure (issue 16, item 13): per student, a Markdown table of
ΔSP, ΔIUSP and (ΔIUSP − ΔSP)/ΔSP, named as in the IUSP paper, with the undefined case (ΔSP ≤ 0)
explained in a footnote; built by ``local/report.py`` from results.json files of known values.
"""

from __future__ import annotations

from pathlib import Path

from kd_modules.results import write_results
from recipes.audio_tagging.local import report

# (coarse, fine) micro-AUPRC per method and seed: binary fractions, so every Δ is exact.
METRICS = {
    "crnn": {
        "none": [(0.4375, 0.375), (0.5625, 0.375)],  # means 0.5, 0.375
        "sp": [(0.5625, 0.3125)],  # ΔSP +6.25 coarse, −6.25 fine
        "iusp": [(0.625, 0.4375)],  # ΔIUSP +12.50, +6.25
        "kd_sp": [(0.5625, 0.375)],  # ΔSP +6.25, exactly 0 fine
        "kd_iusp": [(0.546875, 0.4375)],  # ΔIUSP +4.69, +6.25
    },
    "cnn_small": {"none": [(0.5, 0.375)], "sp": [(0.5625, 0.4375)], "iusp": [(0.625, 0.5)]},
}
FOOTNOTE = "¹ undefined: ΔSP ≤ 0"


def _results(arch: str, method: str, seed: int, coarse: float, fine: float) -> dict:
    metrics = {
        f"{level}_{name}": value
        for level, value in (("coarse", coarse), ("fine", fine))
        for name in ("micro_auprc", "macro_auprc", "micro_f1")
    }
    return {
        "task": "audio_tagging",
        "dataset": "sonyc_ust",
        "role": "student",
        "method": method,
        "arch": arch,
        "seed": seed,
        "fold": 1,
        "metrics": metrics,
        "params": 50_000,
        "macs": 1_000_000,
        "latency_ms": 1.0,
        "checkpoint": "ckpt",
        "selection": "best valid",
        "teacher_fingerprint": None,
        "versions": {},
        "git_commit": "x",
        "wall_time_s": 1.0,
    }


def _report(tmp_path: Path) -> str:
    exp = tmp_path / "exp" / "sonyc_ust"
    for arch, methods in METRICS.items():
        for method, seeds in methods.items():
            for seed, (coarse, fine) in enumerate(seeds, start=1):
                folder = exp / "student" / arch / method / f"seed{seed}"
                write_results(folder / "results.json", _results(arch, method, seed, coarse, fine))
    out = tmp_path / "RESULTS.md"
    report.main([str(exp), "--out", str(out)])
    return out.read_text()


def _gain_section(text: str, arch: str) -> tuple[list[list[str]], str]:
    """The headline table's rows (cells) of one student, and the text of its section."""
    section = text.split(f"### student {arch}\n")[1].split("### ")[0]
    table = section.split("| " + " | ".join(report.GAIN_HEADER) + " |")[1]
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in table.splitlines()
        if line.startswith("| ")
    ]
    return rows, section


def test_headline_figure_is_a_table_of_delta_sp_delta_iusp_and_their_ratio(tmp_path):
    rows, section = _gain_section(_report(tmp_path), "crnn")
    assert report.GAIN_HEADER == [
        "methods",
        "micro-AUPRC",
        "ΔSP (points)",
        "ΔIUSP (points)",
        "(ΔIUSP − ΔSP)/ΔSP",
    ]
    assert rows == [
        ["IUSP vs SP", "coarse", "+6.25", "+12.50", "+100.0 %"],
        ["IUSP vs SP", "fine", "-6.25", "+6.25", "undefined ¹"],
        ["KD+IUSP vs KD+SP", "coarse", "+6.25", "+4.69", "-25.0 %"],
        ["KD+IUSP vs KD+SP", "fine", "+0.00", "+6.25", "undefined ¹"],  # ΔSP exactly 0
    ]
    assert section.count(FOOTNOTE) == 1  # one footnote under the table, for both cells
    assert "27.1 %–122.4 %" in section
    assert "(iusp vs sp" not in section  # the former bullet list


def test_a_student_without_undefined_ratios_has_no_footnote_and_dashes_for_missing_runs(tmp_path):
    rows, section = _gain_section(_report(tmp_path), "cnn_small")
    assert rows == [
        ["IUSP vs SP", "coarse", "+6.25", "+12.50", "+100.0 %"],
        ["IUSP vs SP", "fine", "+6.25", "+12.50", "+100.0 %"],
        ["KD+IUSP vs KD+SP", "coarse", "–", "–", "–"],  # no KD+SP / KD+IUSP runs
        ["KD+IUSP vs KD+SP", "fine", "–", "–", "–"],
    ]
    assert FOOTNOTE not in section
