"""From image files to upscaled image files, around any SR method.

`upscale_image` upscales one `LoadedImage`: the method sees float RGB only; alpha is
upscaled separately (bicubic, clamped), a grayscale image is run as RGB and turned back into
one channel, and bit depth and ICC profile are carried over.

`upscale_files` is what `tokensr upscale` runs: it expands folders, picks output names,
reads, upscales and writes each image, reports a failure as one line and goes on with the
next file, and returns a summary.

Output names: ``<stem>.png`` in the output folder. When several inputs share a stem
(``a.jpg`` and ``a.png``, or ``x/a.png`` and ``y/a.png``) the clash is resolved
deterministically instead of one output silently replacing another: each of them is named
``<stem>_<ext>.png`` (``a_jpg.png``, ``a_png.png``), and if that still clashes a counter is
added (``a_png-2.png``). Comparison ignores case, for case-insensitive file systems.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tokensr.errors import OptionError, TokensrError
from tokensr.inference.tiling import upscale_tiled
from tokensr.io import (
    OUTPUT_FORMATS,
    LoadedImage,
    check_output_path,
    is_image_name,
    read_image,
    write_image,
)
from tokensr.io.read import IMAGE_EXTENSIONS
from tokensr.methods.base import SRMethod

log = logging.getLogger(__name__)

DEFAULT_OVERLAP = 16


def upscale_alpha(alpha: np.ndarray, scale: int) -> np.ndarray:
    """Bicubic upscaling of an ``H x W`` alpha plane, clamped to [0, 1]."""
    if scale == 1:
        return alpha.copy()
    t = torch.from_numpy(np.ascontiguousarray(alpha, dtype=np.float32))[None, None]
    h, w = alpha.shape
    out = F.interpolate(t, size=(h * scale, w * scale), mode="bicubic", align_corners=False)
    return out.clamp_(0.0, 1.0)[0, 0].numpy()


def method_device(method: SRMethod, default: str | torch.device = "cpu") -> torch.device:
    """Where a method runs: its ``device`` attribute, else its first parameter's, else ``default``."""
    dev = getattr(method, "device", None)
    if dev is not None:
        return torch.device(dev)
    params = getattr(method, "parameters", None)
    if callable(params):
        for p in params():
            return p.device  # type: ignore[no-any-return]
    return torch.device(default)


def upscale_image(
    loaded: LoadedImage,
    method: SRMethod,
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    batch: int = 1,
    *,
    device: str | torch.device | None = None,
    quiet: bool = False,
) -> LoadedImage:
    """Upscale one image by ``method.scale``; metadata (gray, bit depth, ICC, source) is kept."""
    run_on = torch.device(device) if device is not None else method_device(method)
    lr = torch.from_numpy(np.ascontiguousarray(loaded.rgb)).permute(2, 0, 1)[None]
    sr = upscale_tiled(method, lr, tile=tile, overlap=overlap, batch=batch, device=run_on, quiet=quiet)
    rgb = sr[0].permute(1, 2, 0).cpu().numpy().astype(np.float32)
    if loaded.grayscale:
        # The method ran on three equal channels; collapse its output back to one.
        gray = LoadedImage(rgb=rgb, grayscale=True).gray()
        rgb = np.repeat(gray[..., None], 3, axis=2)
    alpha = None if loaded.alpha is None else upscale_alpha(loaded.alpha, int(method.scale))
    return loaded.with_pixels(np.ascontiguousarray(rgb), alpha)


@dataclass
class UpscaleSummary:
    """What `upscale_files` did: written outputs and failed inputs with their error line."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def n_written(self) -> int:
        return len(self.written)

    @property
    def n_failed(self) -> int:
        return len(self.failed)


def collect_inputs(inputs: Sequence[str | os.PathLike[str]]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Expand INPUT arguments into image files, plus (path, error) for inputs that do not exist.

    A folder contributes its top-level files with image extensions (hidden files skipped),
    sorted by name; a file named explicitly is always taken (it is decoded by content and
    fails later if it is not an image). Duplicates are dropped.
    """
    files: list[Path] = []
    missing: list[tuple[Path, str]] = []
    seen: set[str] = set()
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted((c for c in p.iterdir() if c.is_file() and is_image_name(c)), key=lambda c: c.name)
            if not found:
                log.warning("%s: no image files in this folder (looked for %s)", p, ", ".join(sorted(IMAGE_EXTENSIONS)))
            candidates = found
        elif p.exists():
            candidates = [p]
        else:
            missing.append((p, f"{p}: no such file or folder"))
            continue
        for c in candidates:
            key = os.path.normcase(str(c.resolve()))
            if key not in seen:
                seen.add(key)
                files.append(c)
    return files, missing


def output_names(files: Sequence[Path], suffix: str = ".png") -> list[str]:
    """Output file names for ``files`` (see the module docstring for how clashes are resolved)."""
    def key(name: str) -> str:
        return name.casefold()

    stems: dict[str, int] = {}
    for f in files:
        stems[key(f.stem)] = stems.get(key(f.stem), 0) + 1
    names: list[str] = []
    used: set[str] = set()
    for f in files:
        base = f.stem if stems[key(f.stem)] == 1 else f"{f.stem}_{f.suffix.lstrip('.').lower() or 'noext'}"
        name, n = base + suffix, 1
        while key(name) in used:
            n += 1
            name = f"{base}-{n}{suffix}"
        used.add(key(name))
        names.append(name)
    return names


def plan_outputs(files: Sequence[Path], out: str | os.PathLike[str], single_file_arg: bool) -> list[Path]:
    """Map input files to output paths.

    ``out`` is taken as a file path when it ends in an output image extension (.png, .jpg,
    .webp, .tif, .bmp) and is not an existing folder; that is only allowed when the only input
    argument was one file. Otherwise ``out`` is a folder (created if needed).
    """
    out_path = Path(out)
    if out_path.suffix.lower() in OUTPUT_FORMATS and not out_path.is_dir():
        if len(files) == 1 and single_file_arg:
            return [out_path]
        raise OptionError(
            f"output '{out}' is a file name, but a folder or several images were given; "
            "give an output folder instead"
        )
    if out_path.exists() and not out_path.is_dir():
        raise OptionError(f"output '{out}' exists and is not a folder")
    return [out_path / name for name in output_names(files)]


def upscale_files(
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    method: SRMethod,
    *,
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    batch: int = 1,
    device: str | torch.device | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    max_pixels: int | None = None,
) -> UpscaleSummary:
    """Upscale image files and folders into ``out``; one failing file never stops the rest.

    Raises OptionError only for problems with the arguments as a whole (no inputs, OUT names
    a file while several images were given); everything per file lands in the summary and is
    logged as one ``error:`` line.
    """
    if not inputs:
        raise OptionError("no input images given")
    files, missing = collect_inputs(inputs)
    summary = UpscaleSummary()
    for path, message in missing:
        log.error("error: %s", message)
        summary.failed.append((path, message))
    if not files:
        if not missing:
            log.error("error: no image files found in %s", ", ".join(str(i) for i in inputs))
            summary.failed.append((Path(str(inputs[0])), "no image files found"))
        return summary
    explicit_single_file = len(inputs) == 1 and Path(inputs[0]).is_file()
    targets = plan_outputs(files, out, explicit_single_file)
    protect = list(files)
    started = time.perf_counter()
    for i, (src, dst) in enumerate(zip(files, targets, strict=True), start=1):
        t0 = time.perf_counter()
        try:
            check_output_path(dst, overwrite=overwrite, protect=protect)  # fail before the slow part
            loaded = read_image(src, max_pixels=max_pixels)
            if hasattr(method, "figure_name"):  # methods that save per-image figures name them after the input
                method.figure_name = src.stem
            result = upscale_image(loaded, method, tile=tile, overlap=overlap, batch=batch, device=device, quiet=quiet)
            write_image(result, dst, overwrite=overwrite, protect=protect)
        except TokensrError as e:  # ImageReadError, ImageWriteError, OptionError, ...
            _fail(summary, src, str(e))
            continue
        except torch.cuda.OutOfMemoryError:  # (torch.OutOfMemoryError in newer torch)
            _fail(summary, src, f"{src}: out of memory; try a smaller --tile (e.g. --tile 256)")
            continue
        except MemoryError:
            _fail(summary, src, f"{src}: out of memory; try a smaller --tile or a smaller image")
            continue
        except Exception as e:  # a bug or a method failure: report it, go on with the next file
            log.debug("traceback for %s", src, exc_info=True)
            _fail(summary, src, f"{src}: unexpected error: {type(e).__name__}: {e}")
            continue
        summary.written.append(dst)
        if not quiet:
            log.info(
                "[%d/%d] %s -> %s (%dx%d -> %dx%d, %.1fs)",
                i, len(files), src, dst, loaded.width, loaded.height, result.width, result.height,
                time.perf_counter() - t0,
            )
    if not quiet:
        log.info(
            "done: %d written, %d failed (%.1fs)",
            summary.n_written, summary.n_failed, time.perf_counter() - started,
        )
    return summary


def _fail(summary: UpscaleSummary, src: Path, message: str) -> None:
    line = " ".join(message.split())
    log.error("error: %s", line)
    summary.failed.append((src, line))
