"""Run several SR methods side by side on several data sets, in one pass.

For every image, every method upscales the same LR input; the output is rounded to 8 bits
(what a saved file holds) and scored. Per-image rows go to ``results.csv`` as they are
produced (so an interrupted run keeps what it measured); at the end ``summary.csv``,
``summary.md`` and ``figures/`` are written.

Time is wall-clock time of the method call alone (no file I/O, no metrics), after one
warm-up call on a tiny input, reported as seconds per output megapixel (s/MP).
"""

from __future__ import annotations

import csv
import logging
import math
import os
import platform
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from tokensr.bench.datasets import Dataset, Sample, load_dataset
from tokensr.bench.figures import busiest_window, side_by_side, steps_plot, tradeoff_plot
from tokensr.bench.report import markdown_tables, summarize, write_csv
from tokensr.bench.spec import MethodSpec
from tokensr.errors import OptionError
from tokensr.inference.precision import autocast, resolve_precision
from tokensr.metrics.image import quantize, read_rgb
from tokensr.metrics.suite import METRICS, MetricSuite

log = logging.getLogger(__name__)

PAIRED_METRICS = ["psnr", "ssim", "niqe"]
Builder = Callable[..., Callable[[torch.Tensor], torch.Tensor]]


@dataclass
class BenchConfig:
    methods: list[MethodSpec]
    data: list[Path]
    out: Path
    scale: int = 4
    device: str = "cpu"
    precision: str = "auto"  # the methods' arithmetic (tokensr.inference.precision), as the CLI's default
    metrics: list[str] = field(default_factory=lambda: list(PAIRED_METRICS))
    metric_weights: str | None = None
    max_images: int | None = None
    tile: int | None = None
    lr_crop: int | None = None  # centre crop for LR-only data sets (paired sets stay whole)
    save_images: bool = False
    figures: int = 3  # images per data set shown side by side
    figure_crop: int = 48  # LR pixels per side of the figure crops
    progress: bool = True


@dataclass
class BenchResult:
    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    out: Path
    figures: list[Path]


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_") or "x"


def _to_tensor(img: np.ndarray, device: str) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0)
    return t[None].to(device)


def _sync(device: str) -> None:
    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()


def _center_crop(lr: np.ndarray, hr: np.ndarray | None, size: int, scale: int) -> tuple[np.ndarray, np.ndarray | None]:
    h, w = lr.shape[:2]
    ch, cw = min(h, size), min(w, size)
    top, left = (h - ch) // 2, (w - cw) // 2
    lr = lr[top : top + ch, left : left + cw]
    if hr is not None:
        hr = hr[top * scale : (top + ch) * scale, left * scale : (left + cw) * scale]
    return lr, hr


def load_pair(sample: Sample, scale: int, lr_crop: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """LR (and HR cut to exactly LR x scale, like BasicSR's mod-crop) as uint8 RGB.
    ``lr_crop`` centre-crops LR-only samples; paired samples are always used whole so that
    their PSNR/SSIM stay comparable with published numbers."""
    lr = read_rgb(sample.lr)
    hr = read_rgb(sample.hr) if sample.hr is not None else None
    if hr is not None:
        need = (lr.shape[0] * scale, lr.shape[1] * scale)
        if hr.shape[0] < need[0] or hr.shape[1] < need[1]:
            raise OptionError(
                f"{sample.hr}: HR is {hr.shape[1]}x{hr.shape[0]}, smaller than LR x{scale} ({need[1]}x{need[0]})"
            )
        hr = hr[: need[0], : need[1]]
    if lr_crop and hr is None:
        lr, hr = _center_crop(lr, hr, lr_crop, scale)
    return lr, hr


def build_methods(cfg: BenchConfig, build: Builder) -> list[tuple[MethodSpec, Callable[[torch.Tensor], torch.Tensor]]]:
    built = []
    for spec in cfg.methods:
        options = dict(spec.options)
        if cfg.tile is not None and spec.name != "bicubic":
            options.setdefault("tile", cfg.tile)
        log.info("building %s", spec.label)
        method = build(spec.name, scale=cfg.scale, weights=spec.weights, device=cfg.device, **options)
        method_scale = getattr(method, "scale", cfg.scale)
        if method_scale != cfg.scale:
            raise OptionError(f"{spec.label} upscales x{method_scale}, the benchmark runs at x{cfg.scale}")
        built.append((spec, method))
    return built


def _warm_up(method: Callable[[torch.Tensor], torch.Tensor], device: str, precision: str) -> None:
    with torch.no_grad(), autocast(precision, device):
        method(torch.full((1, 3, 16, 16), 0.5, device=device))
    _sync(device)


def _describe(ds: Dataset, cfg: BenchConfig) -> str:
    kind = "paired HR/LR" if ds.paired else "LR only (no ground truth)"
    crop = f", LR centre-cropped to at most {cfg.lr_crop}x{cfg.lr_crop}" if cfg.lr_crop and not ds.paired else ""
    return f"{len(ds.samples)} images, {kind}, x{cfg.scale}{crop}."


def run_bench(cfg: BenchConfig, build: Builder | None = None) -> BenchResult:
    """Run ``cfg`` and write everything under ``cfg.out``; returns the rows and summary."""
    if build is None:
        from tokensr.methods import build_method

        build = build_method
    if cfg.figures < 0:
        raise OptionError("figures must be >= 0")
    datasets = [load_dataset(d, cfg.max_images) for d in cfg.data]
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        raise OptionError("two data folders have the same name; results would be mixed up")
    suite = MetricSuite(cfg.metrics, crop_border=cfg.scale, weights_dir=cfg.metric_weights, device=cfg.device)
    cfg = replace(cfg, precision=resolve_precision(cfg.precision, cfg.device))  # 'auto' made concrete once
    methods = build_methods(cfg, build)
    for _, method in methods:
        _warm_up(method, cfg.device, cfg.precision)

    out = Path(cfg.out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    fields = ["dataset", "image", "method", "lr_width", "lr_height", "sr_megapixels", "seconds", "s_per_mp"]
    fields += suite.names
    rows: list[dict[str, Any]] = []
    figures: list[Path] = []
    total = sum(len(d.samples) for d in datasets)
    bar = _progress(total, cfg.progress)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for ds in datasets:
            chosen = _figure_indices(len(ds.samples), cfg.figures)
            for idx, sample in enumerate(ds.samples):
                lr, hr = load_pair(sample, cfg.scale, cfg.lr_crop)
                panels: list[tuple[str, np.ndarray]] = []
                window = busiest_window(lr, cfg.figure_crop) if idx in chosen else None
                for spec, method in methods:
                    if bar is not None:
                        bar.set_postfix_str(f"{ds.name}/{sample.name} {spec.label}", refresh=False)
                    x = _to_tensor(lr, cfg.device)
                    _sync(cfg.device)
                    start = time.perf_counter()
                    with torch.no_grad(), autocast(cfg.precision, cfg.device):
                        y = method(x).float()
                    _sync(cfg.device)
                    seconds = time.perf_counter() - start
                    sr = quantize(y)
                    expected = (lr.shape[0] * cfg.scale, lr.shape[1] * cfg.scale)
                    if sr.shape[:2] != expected:
                        raise OptionError(
                            f"{spec.label} returned {sr.shape[1]}x{sr.shape[0]}, expected {expected[1]}x{expected[0]}"
                        )
                    mp = sr.shape[0] * sr.shape[1] / 1e6
                    row: dict[str, Any] = {
                        "dataset": ds.name, "image": sample.name, "method": spec.label,
                        "lr_width": lr.shape[1], "lr_height": lr.shape[0],
                        "sr_megapixels": mp, "seconds": seconds, "s_per_mp": seconds / mp,
                    }  # fmt: skip
                    row.update(suite(sr, hr))
                    rows.append(row)
                    writer.writerow({k: _cell(row.get(k)) for k in fields})
                    f.flush()
                    if cfg.save_images:
                        folder = out / "images" / safe_name(ds.name) / safe_name(spec.label)
                        folder.mkdir(parents=True, exist_ok=True)
                        Image.fromarray(sr).save(folder / f"{sample.name}.png")
                    if window is not None:
                        panels.append(
                            (f"{spec.label}\n{_panel_metrics(row, hr is not None)}", _crop(sr, window, cfg.scale))
                        )
                if window is not None:
                    figures.append(_save_crops(out, ds.name, sample.name, lr, hr, panels, window, cfg.scale))
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()

    order = [s.label for s, _ in methods]
    summary = summarize(rows, suite.names, order)
    s_fields = ["dataset", "method", "images"] + [x for m in suite.names for x in (m, f"{m}_nan")]
    s_fields += ["seconds", "sr_megapixels", "s_per_mp"]
    write_csv(summary, out / "summary.csv", [k for k in s_fields if any(k in r for r in summary)])
    figures += tradeoff_figures(out, summary, suite.names)
    figures += _steps_figures(out, rows, summary, cfg)
    descriptions = {d.name: _describe(d, cfg) for d in datasets}
    (out / "summary.md").write_text(_summary_markdown(cfg, summary, suite.names, descriptions, figures, out))
    log.info("wrote %s", out / "summary.md")
    return BenchResult(rows, summary, out, figures)


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(round(v, 6))
    return v


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, unit="img", desc="bench")


def _figure_indices(n: int, k: int) -> set[int]:
    if k <= 0 or n == 0:
        return set()
    return {int(round(i)) for i in np.linspace(0, n - 1, min(k, n))}


def _crop(img: np.ndarray, window: tuple[int, int, int], scale: int) -> np.ndarray:
    top, left, side = window
    return img[top * scale : (top + side) * scale, left * scale : (left + side) * scale]


def _panel_metrics(row: dict[str, Any], paired: bool) -> str:
    keys = ["psnr", "ssim"] if paired else ["niqe"]
    parts = []
    for k in keys:
        v = row.get(k)
        if isinstance(v, float) and math.isfinite(v):
            parts.append(f"{k.upper()} {v:.{2 if k == 'psnr' else (4 if k == 'ssim' else 2)}f}")
    return " ".join(parts) or " "


def _save_crops(
    out: Path,
    dataset: str,
    image: str,
    lr: np.ndarray,
    hr: np.ndarray | None,
    panels: list[tuple[str, np.ndarray]],
    window: tuple[int, int, int],
    scale: int,
) -> Path:
    top, left, side = window
    first = [(f"LR (nearest x{scale})\n ", lr[top : top + side, left : left + side])]
    last = [("HR (ground truth)\n ", _crop(hr, window, scale))] if hr is not None else []
    title = f"{dataset}/{image}: LR crop {side}x{side} at ({left}, {top})"
    path = out / "figures" / f"{safe_name(dataset)}_{safe_name(image)}.png"
    return side_by_side(first + panels + last, path, title=title)


def tradeoff_figures(out: Path, summary: list[dict[str, Any]], metric_names: list[str]) -> list[Path]:
    """One quality-versus-speed plot per data set (``figures/tradeoff_<dataset>.png``)."""
    labels = {m: f"{METRICS[m].label} {'↑' if METRICS[m].higher_is_better else '↓'}" for m in METRICS}
    paths = []
    for ds in dict.fromkeys(r["dataset"] for r in summary):
        points = {r["method"]: r for r in summary if r["dataset"] == ds}
        p = tradeoff_plot(points, metric_names, labels, out / "figures" / f"tradeoff_{safe_name(ds)}.png", ds)
        if p is not None:
            paths.append(p)
    return paths


def _steps_figures(
    out: Path, rows: list[dict[str, Any]], summary: list[dict[str, Any]], cfg: BenchConfig
) -> list[Path]:
    """Metric-versus-steps plots for methods run with several ``steps`` values."""
    by_name: dict[str, list[MethodSpec]] = {}
    for spec in cfg.methods:
        if spec.steps is not None:
            by_name.setdefault(spec.name, []).append(spec)
    sweeps = {n: specs for n, specs in by_name.items() if len({s.steps for s in specs}) > 1}
    if not sweeps:
        return []
    paths = []
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        series: dict[str, dict[str, list[tuple[int, float]]]] = {}
        for metric in [m for m in cfg.metrics if m in METRICS] + ["s_per_mp"]:
            for name, specs in sweeps.items():
                for spec in specs:
                    s = next((r for r in summary if r["dataset"] == ds and r["method"] == spec.label), None)
                    if s is None or not isinstance(s.get(metric), float) or not math.isfinite(s[metric]):
                        continue
                    # Variants that differ in more than `steps` get their own line.
                    rest = ":".join(f"{k}={v}" for k, v in sorted(spec.options.items()) if k != "steps")
                    series.setdefault(metric, {}).setdefault(name + (f" ({rest})" if rest else ""), []).append(
                        (spec.steps or 0, s[metric])
                    )
        labels = {m: METRICS[m].label for m in METRICS} | {"s_per_mp": "seconds per output MP"}
        p = steps_plot(series, labels, out / "figures" / f"steps_{safe_name(ds)}.png", f"{ds}: metric vs steps")
        if p is not None:
            paths.append(p)
    return paths


def _summary_markdown(
    cfg: BenchConfig,
    summary: list[dict[str, Any]],
    metric_names: list[str],
    descriptions: dict[str, str],
    figures: list[Path],
    out: Path,
) -> str:
    from tokensr import __version__

    threads = torch.get_num_threads()
    lines = [
        "# Benchmark summary",
        "",
        f"tokensr {__version__}, {time.strftime('%Y-%m-%d %H:%M')}; methods: "
        + ", ".join(f"`{s.label}`" for s in cfg.methods)
        + f"; device `{cfg.device}`, precision {cfg.precision}; "
        + f"{os.cpu_count()} CPU cores visible, torch threads {threads}; "
        + f"{platform.machine()} {platform.system()}.",
        "",
        f"Means over images. PSNR/SSIM on the MATLAB-Y channel and NIQE with {cfg.scale} border "
        "pixels cropped (BasicSR conventions); outputs rounded to 8 bits before scoring. "
        "s/MP = wall-clock seconds of the method call per output megapixel. Best per column in bold.",
        "",
        markdown_tables(summary, metric_names, descriptions),
    ]
    if figures:
        lines += ["## Figures", ""]
        lines += [f"- `{p.relative_to(out)}`" for p in figures]
        lines.append("")
    return "\n".join(lines)
