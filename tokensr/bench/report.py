"""Tables from per-image benchmark rows: the per-(dataset, method) summary, its CSV and its
Markdown rendering (best value per column in bold)."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tokensr.metrics.suite import METRICS

Row = dict[str, Any]


def _mean(values: Iterable[float]) -> tuple[float, int]:
    """Mean of the finite values and how many were not finite (NaN: metric not computable)."""
    vals = list(values)
    finite = [v for v in vals if isinstance(v, (int, float)) and math.isfinite(v)]
    return (sum(finite) / len(finite) if finite else math.nan), len(vals) - len(finite)


def summarize(rows: Sequence[Row], metric_names: Sequence[str], method_order: Sequence[str]) -> list[Row]:
    """One row per (dataset, method): image count, mean of each metric, seconds per output
    megapixel (total time / total output megapixels)."""
    out: list[Row] = []
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    for ds in datasets:
        for method in method_order:
            group = [r for r in rows if r["dataset"] == ds and r["method"] == method]
            if not group:
                continue
            s: Row = {"dataset": ds, "method": method, "images": len(group)}
            for m in metric_names:
                if all(r.get(m) is None or r.get(m) == "" for r in group):
                    continue
                s[m], missing = _mean(float(r[m]) for r in group if r.get(m) not in (None, ""))
                if missing:
                    s[f"{m}_nan"] = missing
            seconds = sum(float(r["seconds"]) for r in group)
            mp = sum(float(r["sr_megapixels"]) for r in group)
            s["seconds"] = seconds
            s["sr_megapixels"] = mp
            s["s_per_mp"] = seconds / mp if mp else math.nan
            out.append(s)
    return out


def write_csv(rows: Sequence[Row], path: str | Path, fields: Sequence[str] | None = None) -> Path:
    path = Path(path)
    if fields is None:
        fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _fmt_csv(r.get(k)) for k in fields})
    return path


def _fmt_csv(v: Any) -> Any:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(round(v, 6))
    return "" if v is None else v


def _fmt(v: Any, digits: int) -> str:
    if not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}"


def markdown_tables(summary: Sequence[Row], metric_names: Sequence[str], datasets: dict[str, str]) -> str:
    """One Markdown table per dataset. ``datasets`` maps name -> a one-line description."""
    lines: list[str] = []
    for ds, desc in datasets.items():
        group = [r for r in summary if r["dataset"] == ds]
        if not group:
            continue
        metrics = [m for m in metric_names if any(m in r for r in group)]
        lines.append(f"### {ds}")
        lines.append("")
        lines.append(desc)
        lines.append("")
        heads = ["method", "images"]
        for m in metrics:
            info = METRICS[m]
            heads.append(f"{info.label} {'↑' if info.higher_is_better else '↓'}")
        heads.append("s/MP ↓")
        lines.append("| " + " | ".join(heads) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(heads) - 1)) + "|")
        best: dict[str, float] = {}
        for m in metrics + ["s_per_mp"]:
            vals = [r[m] for r in group if isinstance(r.get(m), (int, float)) and math.isfinite(r[m])]
            if len(vals) > 1:
                higher = METRICS[m].higher_is_better if m in METRICS else False
                best[m] = max(vals) if higher else min(vals)
        for r in group:
            cells = [f"`{r['method']}`", str(r["images"])]
            for m in metrics + ["s_per_mp"]:
                digits = METRICS[m].digits if m in METRICS else 2
                text = _fmt(r.get(m), digits)
                if r.get(f"{m}_nan"):
                    text += f" ({r[f'{m}_nan']} n/a)"
                if m in best and r.get(m) == best[m]:
                    text = f"**{text}**"
                cells.append(text)
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
