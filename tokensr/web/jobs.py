"""What the web page runs, without the page: uploaded files in, upscaled files and previews out.

`Upscaler.run` takes the files of one request and the options picked on the page, and for
each file decodes it (by content, with the server's pixel cap), upscales it with the chosen
method, writes the full-quality result (PNG, or the upload's own format), and makes two
same-sized previews for the before/after slider. A file that fails (not an image, corrupt,
too many pixels, out of memory) gets one message line and the others go on; nothing here
raises for bad input.

Only one job runs at a time (a lock, on top of the web queue), so two visitors never start
two CPU-heavy upscales at once. The last built method is kept, so a second request with the
same method and options does not load the weights again.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from tokensr.errors import TokensrError
from tokensr.inference.pipeline import render_image
from tokensr.inference.precision import DEFAULT_PRECISION
from tokensr.inference.tiling import Progress as TileProgress
from tokensr.io import LoadedImage, PixelImage, decode_image, to_pil, write_image
from tokensr.methods.base import SRMethod

log = logging.getLogger(__name__)

# The page's per-method options, by the names `tokensr upscale` uses for its flags
# (`save_steps` is the "show each step" box). Methods not listed take none of them.
METHOD_OPTIONS: dict[str, tuple[str, ...]] = {
    "realsrt": ("steps", "confidence", "save_steps"),
    "iter": ("steps", "alpha", "save_steps"),
}
CONFIDENCES = ("critic", "generator")  # RealSRT's --confidence choices

# Output suffix for "same format as the input", by the decoded file's Pillow format; other
# formats (GIF) fall back to PNG.
FORMAT_SUFFIX: dict[str, str] = {
    "PNG": ".png",
    "JPEG": ".jpg",
    "MPO": ".jpg",
    "WEBP": ".webp",
    "TIFF": ".tif",
    "BMP": ".bmp",
}

PREVIEW_PX = 2048  # longest side of the slider previews; the download is always full size
KEEP_JOBS_S = 3600.0  # job folders older than this are deleted when a new job starts

# progress(fraction in [0, 1], what is happening)
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class JobOptions:
    """What the page asks for. ``None`` means the method's own default."""

    method: str  # a name in tokensr.methods.METHODS
    scale: int = 4
    steps: int | None = None  # realsrt, iter
    alpha: float | None = None  # iter
    confidence: str | None = None  # realsrt: critic or generator
    save_steps: bool = False  # realsrt, iter: a figure of every step
    keep_format: bool = False  # write the input's format instead of PNG

    def method_options(self, steps_dir: Path) -> dict[str, Any]:
        """The options the chosen method takes, as keyword arguments for its factory."""
        given = {
            "steps": self.steps,
            "alpha": self.alpha,
            "confidence": self.confidence,
            "save_steps": str(steps_dir) if self.save_steps else None,
        }
        takes = METHOD_OPTIONS.get(self.method, ())
        return {k: v for k, v in given.items() if k in takes and v is not None}


@dataclass
class ImageResult:
    """One uploaded file: its result files, or why there are none."""

    name: str  # the upload's file name
    message: str  # one line: what was done, or the error
    output: Path | None = None  # the full-quality upscaled file
    before: Path | None = None  # preview of the input, enlarged (nearest) to the preview size
    after: Path | None = None  # preview of the output, the same size as `before`
    steps_figure: Path | None = None  # iterative methods with save_steps

    @property
    def ok(self) -> bool:
        return self.output is not None


@dataclass
class JobResult:
    """One request: a result per file, or an error that stopped it before any file."""

    images: list[ImageResult] = field(default_factory=list)
    error: str | None = None  # e.g. the method cannot be built at this scale

    @property
    def messages(self) -> list[str]:
        return [self.error] if self.error else [r.message for r in self.images]


class Upscaler:
    """Runs upscaling jobs one at a time for the web page.

    workdir: where job folders (results, previews, step figures) go.
    device: where methods run ("cpu", "cuda", ...).
    max_pixels: refuse inputs with more pixels (None = tokensr's default cap).
    """

    def __init__(
        self, workdir: Path, device: str = "cpu", max_pixels: int | None = None, preview_px: int = PREVIEW_PX
    ) -> None:
        self.workdir = Path(workdir)
        self.device = device
        self.max_pixels = max_pixels
        self.preview_px = preview_px
        self._lock = threading.Lock()
        self._method: tuple[tuple[Any, ...], SRMethod] | None = None

    def method(self, options: JobOptions) -> SRMethod:
        """Build the method for ``options`` (the last one is kept and reused). Only method names
        are taken, never a weights path: the page must not load files from the server's disk."""
        from tokensr.methods import build_method

        kwargs = options.method_options(self.workdir / "steps")
        key = (options.method, options.scale, tuple(sorted(kwargs.items())))
        if self._method is None or self._method[0] != key:
            self._method = None  # let the old model go before the new one loads
            self._method = (key, build_method(options.method, options.scale, device=self.device, **kwargs))
        return self._method[1]

    def run(self, uploads: Sequence[str | Path], options: JobOptions, progress: Progress | None = None) -> JobResult:
        """Upscale every uploaded file; see the module docstring."""
        report = progress or (lambda fraction, text: None)
        with self._lock:
            if not uploads:
                return JobResult(error="no images: drop one or more image files first")
            self._forget_old_jobs()
            job_dir = self.workdir / f"job-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
            job_dir.mkdir(parents=True)
            report(0.0, f"loading {options.method} x{options.scale}")
            try:
                method = self.method(options)
            except TokensrError as e:
                return JobResult(error=f"error: {one_line(str(e))}")
            except Exception as e:  # e.g. unreadable weights: say so on the page, keep serving
                log.exception("building %s failed", options.method)
                return JobResult(error=f"error: {options.method}: {type(e).__name__}: {one_line(str(e))}")
            result = JobResult()
            for i, upload in enumerate(uploads):
                name = Path(upload).name
                where = f"image {i + 1}/{len(uploads)}: {name}"
                report(i / len(uploads), where)
                folder = job_dir / f"{i + 1:02d}"
                folder.mkdir()
                tiles = _tile_progress(report, i, len(uploads), where)
                result.images.append(self._one(Path(upload), name, folder, method, options, tiles))
            report(1.0, "done")
            return result

    def _one(
        self, upload: Path, name: str, folder: Path, method: SRMethod, options: JobOptions, tiles: TileProgress
    ) -> ImageResult:
        t0 = time.perf_counter()
        try:
            loaded = decode_image(upload.read_bytes(), name=name, max_pixels=self.max_pixels)
            if hasattr(method, "figure_name"):  # methods that save step figures name them after this
                method.figure_name = f"{folder.parent.name}-{folder.name}"
            # A step figure shows the whole image, so it needs one pass; otherwise tiles as the CLI does.
            sr = render_image(
                loaded, method, tile=0 if options.save_steps else None, progress=tiles, precision=DEFAULT_PRECISION
            )
            out = folder / f"{Path(name).stem}_x{options.scale}{output_suffix(loaded, options.keep_format)}"
            write_image(sr, out)
            before, after = self._previews(loaded, sr, folder)
            figure = self._steps_figure(method, folder)
        except TokensrError as e:  # ImageReadError (not an image, corrupt, too big), OptionError, ...
            return ImageResult(name, f"error: {one_line(str(e))}")
        except (MemoryError, torch.cuda.OutOfMemoryError):
            return ImageResult(name, f"error: {name}: out of memory; try a smaller image or a lower scale")
        except OSError as e:
            return ImageResult(name, f"error: {name}: {e.strerror or e}")
        except Exception as e:  # a bug or a method failure: say so on the page, keep serving
            log.exception("upscaling %s failed", name)
            return ImageResult(name, f"error: {name}: unexpected error: {type(e).__name__}: {one_line(str(e))}")
        seconds = time.perf_counter() - t0
        message = (
            f"{name}: {loaded.width}x{loaded.height} -> {sr.width}x{sr.height} with {method.name} "
            f"x{options.scale} in {seconds:.1f} s -> {out.name}"
        )
        return ImageResult(name, message, out, before, after, figure)

    def _previews(self, loaded: LoadedImage, sr: PixelImage, folder: Path) -> tuple[Path, Path]:
        """8-bit PNG previews of input and output at one size (at most ``preview_px``)."""
        shrink = min(1.0, self.preview_px / max(sr.width, sr.height))
        size = (max(1, round(sr.width * shrink)), max(1, round(sr.height * shrink)))
        before_im = _display(to_pil(loaded, bits=8)).resize(size, Image.Resampling.NEAREST)
        after_im = _display(_pil8(sr))
        if after_im.size != size:
            after_im = after_im.resize(size, Image.Resampling.LANCZOS)
        before, after = folder / "preview_before.png", folder / "preview_after.png"
        before_im.save(before)
        after_im.save(after)
        return before, after

    def _steps_figure(self, method: SRMethod, folder: Path) -> Path | None:
        """Move the step figure the method just wrote (if any) into the job folder."""
        name = getattr(method, "figure_name", None)
        steps_dir = getattr(method, "save_steps", None)
        if not name or not steps_dir:
            return None
        written = Path(steps_dir) / f"{name}_steps.png"
        if not written.is_file():
            return None
        return Path(shutil.move(written, folder / "steps.png"))

    def _forget_old_jobs(self) -> None:
        if not self.workdir.is_dir():
            return
        cutoff = time.time() - KEEP_JOBS_S
        for job in self.workdir.glob("job-*"):
            try:
                if job.stat().st_mtime < cutoff:
                    shutil.rmtree(job, ignore_errors=True)
            except OSError:
                pass


def output_suffix(loaded: LoadedImage, keep_format: bool) -> str:
    """``.png``, or the suffix of the input's own format when ``keep_format`` (PNG for GIF)."""
    if not keep_format:
        return ".png"
    return FORMAT_SUFFIX.get(loaded.format or "", ".png")


def one_line(text: str) -> str:
    return " ".join(text.split())


class _ImageProgress:
    """The tiles (or a method's own steps) of image ``index`` (of ``count``) as a share of the
    whole job: a tiling ``progress(done, total)`` callable. Like the CLI's bar it says what it
    counts: "tile", until `StepProgress` calls `set_unit` for a method that reports its steps
    (RealSRT's token windows)."""

    def __init__(self, report: Progress, index: int, count: int, where: str) -> None:
        self.report, self.index, self.count, self.where = report, index, count, where
        self.unit = "tile"

    def set_unit(self, unit: str) -> None:
        self.unit = unit

    def __call__(self, done: int, total: int) -> None:
        share = (self.index + done / max(total, 1)) / self.count
        self.report(share, f"{self.where}: {self.unit} {done}/{total}")


def _tile_progress(report: Progress, index: int, count: int, where: str) -> TileProgress:
    """The progress callable for image ``index`` (of ``count``) of a job."""
    return _ImageProgress(report, index, count, where)


def _pil8(image: PixelImage) -> Image.Image:
    """The pixels as an 8-bit PIL image (L, LA, RGB or RGBA)."""
    pixels = image.pixels
    if pixels.dtype != np.uint8:
        pixels = ((pixels.astype(np.uint32) + 128) // 257).astype(np.uint8)
    return Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)


def _display(im: Image.Image) -> Image.Image:
    """RGB or RGBA for the browser (gray becomes RGB)."""
    return im.convert("RGBA" if "A" in im.getbands() else "RGB")


__all__ = ["CONFIDENCES", "METHOD_OPTIONS", "ImageResult", "JobOptions", "JobResult", "Upscaler", "output_suffix"]
