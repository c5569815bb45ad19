"""Comparison figures: the same crop from every method side by side, and metric-versus-steps
plots for iterative methods.

Crops are drawn with Pillow (no extra dependency); the line plots use matplotlib when it is
installed and are skipped with a log line otherwise.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger(__name__)


def busiest_window(lr: np.ndarray, side: int) -> tuple[int, int, int]:
    """(top, left, side) of the ``side x side`` LR window with the most gradient energy:
    the most telling place to compare textures and edges."""
    h, w = lr.shape[:2]
    side = max(1, min(side, h, w))
    g = lr.astype(np.float64).mean(axis=2) if lr.ndim == 3 else lr.astype(np.float64)
    energy = np.zeros_like(g)
    energy[:, 1:] += np.abs(np.diff(g, axis=1))
    energy[1:, :] += np.abs(np.diff(g, axis=0))
    integral = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = integral[side:, side:] - integral[:-side, side:] - integral[side:, :-side] + integral[:-side, :-side]
    top, left = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(top), int(left), side


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def wrap_label(label: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> str:
    """``label`` with every line broken to fit ``width`` pixels in ``font``: after the last
    ``:``, ``,``, ``/`` or ``=`` that fits (method specs such as
    ``realsrt:weights=runs/x:color_fix=none``), else after the last character that fits."""
    out: list[str] = []
    for line in label.split("\n"):
        while line and font.getlength(line) > width:
            fit = 1  # the longest head that fits (at least one character)
            while fit < len(line) and font.getlength(line[: fit + 1]) <= width:
                fit += 1
            cut = max((i + 1 for i, c in enumerate(line[:fit]) if c in ":,/=" and i + 1 < len(line)), default=fit)
            out.append(line[:cut])
            line = line[cut:]
        out.append(line)
    return "\n".join(out)


def side_by_side(
    panels: Sequence[tuple[str, np.ndarray]],
    path: str | Path,
    panel_size: int = 192,
    title: str | None = None,
) -> Path:
    """Save one row of equally sized crops (uint8 ``h x w x 3``) with a label under each.
    Crops are resized with nearest neighbour so that pixels stay visible."""
    font = _font(12)
    panels = [(wrap_label(label, font, panel_size - 4), crop) for label, crop in panels]
    label_h = 18 * max(label.count("\n") + 1 for label, _ in panels) + 4
    title_h = 20 if title else 0
    gap = 4
    width = len(panels) * panel_size + (len(panels) + 1) * gap
    height = title_h + panel_size + label_h + 2 * gap
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((gap, 3), title, fill=(0, 0, 0), font=font)
    for i, (label, crop) in enumerate(panels):
        x = gap + i * (panel_size + gap)
        img = Image.fromarray(np.ascontiguousarray(crop)).resize((panel_size, panel_size), Image.Resampling.NEAREST)
        canvas.paste(img, (x, title_h + gap))
        draw.multiline_text((x + 2, title_h + gap + panel_size + 3), label, fill=(0, 0, 0), font=font, spacing=2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, optimize=True)
    return path


def steps_plot(
    series: dict[str, dict[str, list[tuple[int, float]]]],
    labels: dict[str, str],
    path: str | Path,
    title: str,
) -> Path | None:
    """``series[metric][method] = [(steps, mean value), ...]`` as one panel per metric.
    Returns None (and logs why) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: skipping %s", path)
        return None
    metrics = [m for m in series if series[m]]
    if not metrics:
        return None
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, metric in zip(axes.ravel(), metrics, strict=False):
        for method, points in sorted(series[metric].items()):
            pts = sorted(points)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
        ax.set_xlabel("steps")
        ax.set_ylabel(labels.get(metric, metric))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes.ravel()[len(metrics) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def tradeoff_plot(
    points: dict[str, dict[str, float]],
    metrics: Sequence[str],
    labels: dict[str, str],
    path: str | Path,
    title: str,
) -> Path | None:
    """Quality against speed: ``points[method] = {metric: mean, "s_per_mp": ...}``, one panel
    per metric with seconds per output megapixel on a log axis. A picture of the summary
    table that contains no image pixels. Returns None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: skipping %s", path)
        return None
    usable = [m for m in metrics if any(math.isfinite(p.get(m, math.nan)) for p in points.values())]
    if not usable or not points:
        return None
    fig, axes = plt.subplots(1, len(usable), figsize=(4 * len(usable), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], usable, strict=False):
        for method, p in points.items():
            x, y = p.get("s_per_mp", math.nan), p.get(metric, math.nan)
            if math.isfinite(x) and math.isfinite(y) and x > 0:
                ax.scatter([x], [y], s=30)
                ax.annotate(method, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("seconds per output MP (log)")
        ax.set_ylabel(labels.get(metric, metric))
        ax.grid(alpha=0.3, which="both")
        ax.margins(x=0.25, y=0.15)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
