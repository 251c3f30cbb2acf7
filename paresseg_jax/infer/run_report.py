"""A small Markdown report of a folder prediction: one line per case, one row per lesion, the overlays.

``<output>/report.md`` beside ``summary.json`` and ``lesions.csv``, for a
person to read in any viewer (GitHub, an IDE, a notebook).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from paresseg_jax.atomic import write_text

REPORT_FILE = "report.md"


def _number(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def write_report(output: str | os.PathLike, records: Sequence[Mapping], title: str) -> Path:
    """Write ``report.md`` from a folder's ``summary.json`` records (those with ``lesions``)."""
    output = Path(output)
    cases = [["case", "tumor ml", "liver ml", "lesions", "burden %", "tumor Dice %"]]
    lesions = []
    phases = sorted({p for r in records for lesion in r["lesions"]["lesions"] for p in lesion.get("hu", {})},
                    key=lambda p: (p != "pv", p))
    for record in records:
        dice = record.get("metrics", {}).get("dice")
        cases.append([record["case_id"], _number(record["tumor_ml"]), _number(record.get("liver_ml")),
                      str(record["lesions"]["count"]), _number(record["lesions"]["tumor_burden_pct"], 2),
                      _number(None if dice is None else 100 * dice)])
        for lesion in record["lesions"]["lesions"]:
            hu = [f"{lesion['hu'][p]['mean']:.0f} ({lesion['hu'][p]['sd']:.0f})" if p in lesion["hu"] else "-"
                  for p in phases]
            lesions.append([record["case_id"], str(lesion["lesion"]), _number(lesion["volume_ml"], 2),
                            f"{lesion['longest_diameter_mm']:.1f} x {lesion['perpendicular_diameter_mm']:.1f}",
                            f"{lesion['first_slice']}-{lesion['last_slice']}",
                            _number(lesion.get("mean_probability"), 2), *hu])
    lines = [f"# {title}", "", *_table(cases[0], cases[1:]), "", "## Lesions", "",
             "Numbered by decreasing volume per case, as in lesions.csv; diameters: longest axial and its "
             "perpendicular (mm); HU: mean (sd).", ""]
    lines += _table(["case", "lesion", "ml", "diameters mm", "slices", "mean p", *[f"{p.upper()} HU" for p in phases]],
                    lesions)
    overlays = [r for r in records if "overlay" in r.get("files", {})]
    if overlays:
        lines += ["", "## Overlays", ""]
        lines += [f"![{r['case_id']}]({Path(r['files']['overlay']).name})" for r in overlays]
    return write_text(output / REPORT_FILE, "\n".join(lines) + "\n")
