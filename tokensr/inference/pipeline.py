"""From image files to upscaled image files, around any SR method.

`upscale_image` upscales one `LoadedImage`: the method sees float RGB only; alpha is
upscaled separately (bicubic, clamped), a grayscale image is run as RGB and turned back into
one channel, and bit depth and ICC profile are carried over.

`render_image` does the same for files: it streams the tiles' finished rows straight into a
uint8 / uint16 `PixelImage` (the output's own bytes), so peak memory is about the output file's
raw size plus one band of tiles, never the float32 image (four times the bytes and more).
`render_png` goes one step further for PNG outputs: each piece of finished rows is filtered,
compressed and written to the (temporary, then renamed) output file at once, so the output
image is never held at all; `upscale_files` uses it for every PNG output that is not resized.

Tiling is automatic (``tile=None``): an image larger than `AUTO_TILE` LR pixels on a side is
processed in `AUTO_TILE`-pixel tiles, a smaller one in one pass; ``tile=0`` forces one pass.
``progress(done, total)`` is called after every batch of tiles (`tokensr.inference.progress`).

`upscale_files` is what `tokensr upscale` runs: it expands folders, picks output names,
reads, upscales and writes each image (or skips it when its output exists and
``skip_existing`` is set, so an interrupted folder run picks up where it stopped), reports a
failure as one line and goes on with the next file, and returns a summary.

Output names: ``<stem><suffix>.<ext>`` in the output folder (`OutputNaming`; default
``<stem>.png``), in the same sub-folder as the input below its input folder with
``recursive``. When several inputs for one output folder share a stem (``a.jpg`` and
``a.png``, or ``x/a.png`` and ``y/a.png``) the clash is resolved deterministically instead of
one output silently replacing another: each of them is named ``<stem>_<ext>.png``
(``a_jpg.png``, ``a_png.png``), and if that still clashes a counter is added
(``a_png-2.png``). Comparison ignores case, for case-insensitive file systems.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tokensr.errors import OptionError, TokensrError
from tokensr.inference.precision import autocast
from tokensr.inference.progress import ProgressBar
from tokensr.inference.tiling import Progress, upscale_tiled, upscale_tiled_rows
from tokensr.io import (
    OUTPUT_FORMATS,
    LoadedImage,
    PixelImage,
    check_output_path,
    check_output_size,
    float_to_uint,
    is_image_name,
    output_format,
    png_rows,
    read_image,
    write_image,
)
from tokensr.io.loaded import LUMA_WEIGHTS
from tokensr.io.read import IMAGE_EXTENSIONS
from tokensr.io.write import RowWriter
from tokensr.methods.base import SRMethod

log = logging.getLogger(__name__)

DEFAULT_OVERLAP = 16
# tile=None: LR images with a side above this many pixels are cut into tiles of this side.
# 512 keeps the overlap's extra work near 6 % and one band of float tiles at 2048 output rows
# (x4), about 12 bytes per output pixel of one band: 0.6 GB for a 24,000-px-wide result.
AUTO_TILE = 512
_SINK_ROWS = 128  # output rows quantised at a time
_ALPHA_ROWS = 256  # LR rows of alpha upscaled at a time
_ALPHA_MARGIN = 3  # LR rows of context each side: bicubic reads 2, so strips join exactly


def resolve_tile(tile: int | None, height: int, width: int, method: object = None) -> int | None:
    """The tile side to use: ``None`` = automatic (`AUTO_TILE` above that size), 0 = one pass.

    Automatic tiling is off for a method asked to save per-image step figures
    (``save_steps``), so that its figure shows the whole image rather than one per tile.
    """
    if tile is None:
        if getattr(method, "save_steps", None):
            return None
        return AUTO_TILE if max(height, width) > AUTO_TILE else None
    return tile or None


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
    progress: Progress | None = None,
    precision: str = "fp32",
) -> LoadedImage:
    """Upscale one image by ``method.scale``; metadata (gray, bit depth, ICC, source) is kept.

    The result is float32 (`LoadedImage`); `render_image` gives the same pixels as uint8/uint16
    with far less memory. ``tile``: None = automatic, 0 = one pass (see `resolve_tile`).
    ``quiet=False`` without ``progress`` shows a tile bar on stderr when stderr is a terminal.
    ``precision``: see `render_image`.
    """
    run_on = torch.device(device) if device is not None else method_device(method)
    lr = torch.from_numpy(np.ascontiguousarray(loaded.rgb)).permute(2, 0, 1)[None]
    use_tile = resolve_tile(tile, loaded.height, loaded.width, method)
    with autocast(precision, run_on):
        sr = upscale_tiled(
            method, lr, tile=use_tile, overlap=overlap, batch=batch, device=run_on, quiet=quiet, progress=progress
        )
    rgb = sr[0].permute(1, 2, 0).cpu().numpy().astype(np.float32)
    if loaded.grayscale:
        # The method ran on three equal channels; collapse its output back to one.
        gray = LoadedImage(rgb=rgb, grayscale=True).gray()
        rgb = np.repeat(gray[..., None], 3, axis=2)
    alpha = None if loaded.alpha is None else upscale_alpha(loaded.alpha, int(method.scale))
    return loaded.with_pixels(np.ascontiguousarray(rgb), alpha)


def render_rows(
    loaded: LoadedImage,
    method: SRMethod,
    emit: RowWriter,
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    batch: int = 1,
    *,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
    precision: str = "fp32",
) -> tuple[int, int]:
    """Upscale one image and hand its finished rows, as uint8 / uint16 pixels (the source's bit
    depth, alpha included), to ``emit(rows)``: top to bottom, ``n x W x C`` at most
    `_SINK_ROWS` rows at a time, each row once. The arrays are new for every call.

    This is what `render_image` (rows into one array) and `render_png` (rows into a PNG file)
    share; arguments as for `render_image`. Returns the output size ``(width, height)``.
    """
    run_on = torch.device(device) if device is not None else method_device(method)
    scale = int(method.scale)
    colour = 1 if loaded.grayscale else 3
    channels = loaded.channels
    dtype = np.uint8 if loaded.bit_depth == 8 else np.uint16
    width = loaded.width * scale
    alpha = None if loaded.alpha is None else _AlphaRows(loaded.alpha, scale, loaded.bit_depth)

    def sink(y0: int, rows: torch.Tensor) -> None:
        for k in range(0, rows.shape[2], _SINK_ROWS):  # small pieces even when one pass gives all rows
            rgb = rows[0, :, k : k + _SINK_ROWS].permute(1, 2, 0).cpu().numpy()
            if loaded.grayscale:
                rgb = (rgb @ LUMA_WEIGHTS)[..., None]
            piece = np.empty((rgb.shape[0], width, channels), dtype=dtype)
            piece[..., :colour] = float_to_uint(rgb, loaded.bit_depth)
            if alpha is not None:
                piece[..., colour] = alpha.take(rgb.shape[0])
            emit(piece)

    lr = torch.from_numpy(np.ascontiguousarray(loaded.rgb)).permute(2, 0, 1)[None]
    use_tile = resolve_tile(tile, loaded.height, loaded.width, method)
    with autocast(precision, run_on):
        out_h, out_w = upscale_tiled_rows(method, lr, sink, use_tile, overlap, batch, device=run_on, progress=progress)
    return out_w, out_h


class _AlphaRows:
    """The upscaled alpha plane as uint rows, handed out in order (`alpha_strips` underneath,
    so the values are exactly those of `upscale_alpha`); holds one strip at a time."""

    def __init__(self, alpha: np.ndarray, scale: int, bits: int) -> None:
        self._strips = alpha_strips(alpha, scale)
        self._bits = bits
        self._plane = np.empty((0, alpha.shape[1] * scale), dtype=np.float32)

    def take(self, n: int) -> np.ndarray:
        """The next ``n`` rows, ``n x W`` uint8 / uint16."""
        parts = []
        while n > 0:
            if self._plane.shape[0] == 0:
                self._plane = next(self._strips)[1]
            parts.append(self._plane[:n])
            n -= parts[-1].shape[0]
            self._plane = self._plane[parts[-1].shape[0] :]
        rows = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        return float_to_uint(rows, self._bits)


def render_image(
    loaded: LoadedImage,
    method: SRMethod,
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    batch: int = 1,
    *,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
    precision: str = "fp32",
) -> PixelImage:
    """Upscale one image straight into uint8 / uint16 pixels (the source's bit depth).

    Same result as ``upscale_image(...).to_pixels()``, but finished rows are quantised as the
    tiles produce them, so the float image never exists: peak memory is the output's own bytes
    plus one band of tiles. ``tile``: None = automatic, 0 = one pass (see `resolve_tile`).
    ``precision``: ``fp32``, ``bf16``, ``fp16`` (CUDA) or ``auto``, the arithmetic the method
    runs in (`tokensr.inference.precision`; blending stays float32).
    `render_png` writes the same pixels to a PNG file without holding them.
    """
    scale = int(method.scale)
    dtype = np.uint8 if loaded.bit_depth == 8 else np.uint16
    pixels = np.empty((loaded.height * scale, loaded.width * scale, loaded.channels), dtype=dtype)
    filled = 0

    def keep(rows: np.ndarray) -> None:
        nonlocal filled
        pixels[filled : filled + rows.shape[0]] = rows
        filled += rows.shape[0]

    render_rows(loaded, method, keep, tile, overlap, batch, device=device, progress=progress, precision=precision)
    return PixelImage(pixels, icc_profile=loaded.icc_profile, source=loaded.source)


def render_png(
    loaded: LoadedImage,
    method: SRMethod,
    path: str | os.PathLike[str],
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    batch: int = 1,
    *,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
    precision: str = "fp32",
    overwrite: bool = False,
    protect: Sequence[str | os.PathLike[str]] = (),
) -> tuple[int, int]:
    """`render_image` written straight to the PNG file ``path`` as the rows finish.

    The file holds the same pixels (and ICC profile) as ``write_image(render_image(...), path)``
    but the output image is never held: peak memory is one band of tiles. The write is atomic
    (`tokensr.io.png_rows`): ``path`` appears only once the whole image is written, never
    replaces the input (or a path in ``protect``), and replaces another existing file only
    with ``overwrite``. Returns the output size ``(width, height)``.
    """
    scale = int(method.scale)
    keep_safe = [p for p in [loaded.source, *protect] if p is not None]
    with png_rows(
        path,
        loaded.width * scale,
        loaded.height * scale,
        loaded.channels,
        loaded.bit_depth,
        icc_profile=loaded.icc_profile,
        overwrite=overwrite,
        protect=keep_safe,
    ) as write:
        size = render_rows(
            loaded, method, write, tile, overlap, batch, device=device, progress=progress, precision=precision
        )
    return size


def streams_to_png(dst: str | os.PathLike[str], width: int, height: int, scale: int, final: tuple[int, int]) -> bool:
    """Whether `upscale_files` writes this output row by row (`render_png`): a PNG output that is
    not resized afterwards (``--outscale`` other than the method's scale needs the whole image)."""
    return output_format(dst) == "PNG" and final == (width * scale, height * scale)


def resize_pixels(image: PixelImage, width: int, height: int) -> PixelImage:
    """Resize to ``width x height``: area averaging to shrink, bicubic (saturated) to enlarge."""
    import cv2

    if (width, height) == (image.width, image.height):
        return image
    shrink = width <= image.width and height <= image.height
    resized = cv2.resize(image.pixels, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    if resized.ndim == 2:
        resized = resized[..., None]
    return PixelImage(resized, icc_profile=image.icc_profile, source=image.source)


def outscale_size(width: int, height: int, outscale: float) -> tuple[int, int]:
    """The output size for ``--outscale``: each side times ``outscale``, rounded, at least 1."""
    return max(1, round(width * outscale)), max(1, round(height * outscale))


def alpha_strips(alpha: np.ndarray, scale: int, rows: int = _ALPHA_ROWS) -> Iterator[tuple[int, np.ndarray]]:
    """`upscale_alpha` in horizontal strips: ``(output row, plane)`` pieces, exactly equal to it."""
    h = alpha.shape[0]
    for r0 in range(0, h, rows):
        r1 = min(r0 + rows, h)
        a0, a1 = max(r0 - _ALPHA_MARGIN, 0), min(r1 + _ALPHA_MARGIN, h)
        up = upscale_alpha(alpha[a0:a1], scale)
        yield r0 * scale, up[(r0 - a0) * scale : (r1 - a0) * scale]


@dataclass
class UpscaleSummary:
    """What `upscale_files` did: written outputs, skipped outputs (they existed and
    ``skip_existing`` was set) and failed inputs with their one-line reason (which starts
    with the input's path)."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def n_written(self) -> int:
        return len(self.written)

    @property
    def n_failed(self) -> int:
        return len(self.failed)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def fail_log(self) -> str:
        """The failures, one ``<input>: <reason>`` line each (the text of ``--fail-log``)."""
        return "".join(f"{reason}\n" for _, reason in self.failed)


@dataclass(frozen=True)
class OutputNaming:
    """How output files are named: ``<stem><suffix><ext>`` in the output folder.

    suffix: added to every stem (e.g. ``_x4``); no path separators.
    ext: the output format for folder outputs (``.png``, ``.jpg``, ``.webp``, ``.tif``, ``.bmp``).
    recursive: folders are scanned with their sub-folders, and outputs mirror the tree below
        each input folder.
    """

    suffix: str = ""
    ext: str = ".png"
    recursive: bool = False

    def __post_init__(self) -> None:
        if any(sep in self.suffix for sep in ("/", "\\", os.sep)) or self.suffix in (".", ".."):
            raise OptionError(f"--suffix must be part of a file name, got '{self.suffix}'")
        ext = self.ext.lower() if self.ext.startswith(".") else "." + self.ext.lower()
        if ext not in OUTPUT_FORMATS:
            known = ", ".join(sorted(e.lstrip(".") for e in OUTPUT_FORMATS))
            raise OptionError(f"--ext must be one of {known}, got '{self.ext}'")
        object.__setattr__(self, "ext", ext)


@dataclass(frozen=True)
class InputFile:
    """An image to upscale and the sub-folder (relative to OUT) its output goes to."""

    path: Path
    subfolder: Path = Path()


def collect_inputs(
    inputs: Sequence[str | os.PathLike[str]],
    recursive: bool = False,
    skip: Sequence[Path] = (),
) -> tuple[list[InputFile], list[tuple[Path, str]]]:
    """Expand INPUT arguments into image files, plus (path, error) for inputs that do not exist.

    A folder contributes its top-level files with image extensions (hidden files skipped),
    sorted by name; with ``recursive`` also those of its sub-folders (hidden folders and the
    folders in ``skip``, e.g. the output folder, are not entered), each with its sub-folder
    relative to the input folder. A file named explicitly is always taken (it is decoded by
    content and fails later if it is not an image). Duplicates are dropped.
    """
    files: list[InputFile] = []
    missing: list[tuple[Path, str]] = []
    seen: set[str] = set()
    skip_keys = {os.path.normcase(str(p.resolve())) for p in skip}
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = _scan_folder(p, recursive, skip_keys)
            if not found:
                log.warning("%s: no image files in this folder (looked for %s)", p, ", ".join(sorted(IMAGE_EXTENSIONS)))
            candidates = found
        elif p.exists():
            candidates = [InputFile(p)]
        else:
            missing.append((p, f"{p}: no such file or folder"))
            continue
        for c in candidates:
            key = os.path.normcase(str(c.path.resolve()))
            if key not in seen:
                seen.add(key)
                files.append(c)
    return files, missing


def _scan_folder(folder: Path, recursive: bool, skip_keys: set[str]) -> list[InputFile]:
    if not recursive:
        found = sorted((c for c in folder.iterdir() if c.is_file() and is_image_name(c)), key=lambda c: c.name)
        return [InputFile(c) for c in found]
    out: list[InputFile] = []
    for root, dirs, names in os.walk(folder):  # symbolic links to folders are not followed
        here = Path(root)
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and os.path.normcase(str((here / d).resolve())) not in skip_keys
        )
        sub = here.relative_to(folder)
        out += [InputFile(here / n, sub) for n in sorted(names) if is_image_name(n) and (here / n).is_file()]
    return out


def output_names(files: Sequence[Path], suffix: str = ".png", tag: str = "") -> list[str]:
    """Output file names ``<stem><tag><suffix>`` for ``files`` (see the module docstring for
    how clashes are resolved)."""

    def key(name: str) -> str:
        return name.casefold()

    stems: dict[str, int] = {}
    for f in files:
        stems[key(f.stem)] = stems.get(key(f.stem), 0) + 1
    names: list[str] = []
    used: set[str] = set()
    for f in files:
        base = f.stem if stems[key(f.stem)] == 1 else f"{f.stem}_{f.suffix.lstrip('.').lower() or 'noext'}"
        base += tag
        name, n = base + suffix, 1
        while key(name) in used:
            n += 1
            name = f"{base}-{n}{suffix}"
        used.add(key(name))
        names.append(name)
    return names


def plan_outputs(
    files: Sequence[Path | InputFile],
    out: str | os.PathLike[str],
    single_file_arg: bool,
    naming: OutputNaming | None = None,
) -> list[Path]:
    """Map input files to output paths.

    ``out`` is taken as a file path when it ends in an output image extension (.png, .jpg,
    .webp, .tif, .bmp) and is not an existing folder; that is only allowed when the only input
    argument was one file. Otherwise ``out`` is a folder (created if needed) and names follow
    ``naming``, resolved separately in each output sub-folder.
    """
    naming = naming or OutputNaming()
    items = [f if isinstance(f, InputFile) else InputFile(f) for f in files]
    out_path = Path(out)
    if out_path.suffix.lower() in OUTPUT_FORMATS and not out_path.is_dir():
        if len(items) == 1 and single_file_arg:
            if naming.suffix or naming.ext != ".png":
                raise OptionError(f"--suffix and --ext name files in an output folder; '{out}' is a file name")
            return [out_path]
        raise OptionError(
            f"output '{out}' is a file name, but a folder or several images were given; give an output folder instead"
        )
    if out_path.exists() and not out_path.is_dir():
        raise OptionError(f"output '{out}' exists and is not a folder")
    groups: dict[Path, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(item.subfolder, []).append(i)
    targets: list[Path] = [out_path] * len(items)
    for sub, indices in groups.items():
        names = output_names([items[i].path for i in indices], naming.ext, naming.suffix)
        for i, name in zip(indices, names, strict=True):
            targets[i] = out_path / sub / name
    return targets


def plan_files(
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    naming: OutputNaming | None = None,
) -> tuple[list[tuple[Path, Path]], list[tuple[Path, str]]]:
    """(input, output) pairs for INPUT arguments and OUT, plus (input, reason) for missing inputs.

    Raises OptionError for problems with the arguments as a whole (no inputs, OUT names a
    file while several images were given).
    """
    if not inputs:
        raise OptionError("no input images given")
    naming = naming or OutputNaming()
    files, missing = collect_inputs(inputs, naming.recursive, skip=[Path(out)])
    if not files:
        if not missing:
            missing.append((Path(str(inputs[0])), "no image files found"))
        return [], missing
    explicit_single_file = len(inputs) == 1 and Path(inputs[0]).is_file()
    targets = plan_outputs(files, out, explicit_single_file, naming)
    return [(f.path, t) for f, t in zip(files, targets, strict=True)], missing


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
    skip_existing: bool = False,
    quiet: bool = False,
    max_pixels: int | None = None,
    progress: Callable[[Path], Progress] | None = None,
    naming: OutputNaming | None = None,
    outscale: float | None = None,
    precision: str = "fp32",
) -> UpscaleSummary:
    """Upscale image files and folders into ``out``; one failing file never stops the rest.

    tile, overlap, batch, device: see `render_image` and `tokensr.inference.tiling`.
    skip_existing: an input whose output file already exists is skipped (not an error), so a
        rerun of an interrupted folder job does only what is left. Outputs are written
        atomically, so an existing output is always complete.
    progress: ``progress(input_path)`` returns the ``progress(done, total)`` callback for that
        image's tiles; default: a terminal bar per image unless ``quiet``.
    naming: output names and format, recursion into sub-folders (`OutputNaming`).
    outscale: the final size is the input's times this (the method runs at its own scale,
        then the result is resized; see `resize_pixels`); None = the method's scale.
    precision: the arithmetic the method runs in (`tokensr.inference.precision`).

    Raises OptionError only for problems with the arguments as a whole (no inputs, OUT names
    a file while several images were given, skip_existing with overwrite); everything per
    file lands in the summary and is logged as one ``error:`` line, and the run ends with the
    list of failures.
    """
    if skip_existing and overwrite:
        raise OptionError("--skip-existing and --overwrite contradict each other; give one of them")
    if outscale is not None and outscale <= 0:
        raise OptionError(f"--outscale must be > 0, got {outscale}")
    pairs, missing = plan_files(inputs, out, naming)
    summary = UpscaleSummary()
    for path, message in missing:
        _fail(summary, path, message)
    protect = [src for src, _ in pairs]
    started = time.perf_counter()
    for i, (src, dst) in enumerate(pairs, start=1):
        t0 = time.perf_counter()
        if skip_existing and dst.is_file():
            summary.skipped.append(dst)
            if not quiet:
                log.info("[%d/%d] %s -> %s exists, skipped", i, len(pairs), src, dst)
            continue
        bar = progress(src) if progress is not None else ProgressBar(desc=src.name, enabled=not quiet)
        try:
            check_output_path(dst, overwrite=overwrite, protect=protect)  # fail before the slow part
            loaded = read_image(src, max_pixels=max_pixels)
            final = outscale_size(loaded.width, loaded.height, outscale or int(method.scale))
            check_output_size(dst, *final)
            if hasattr(method, "figure_name"):  # methods that save per-image figures name them after the input
                method.figure_name = src.stem
            if streams_to_png(dst, loaded.width, loaded.height, int(method.scale), final):
                size = render_png(
                    loaded,
                    method,
                    dst,
                    tile,
                    overlap,
                    batch,
                    device=device,
                    progress=bar,
                    precision=precision,
                    overwrite=overwrite,
                    protect=protect,
                )
                _close(bar)
            else:
                result = render_image(
                    loaded, method, tile, overlap, batch, device=device, progress=bar, precision=precision
                )
                _close(bar)
                result = resize_pixels(result, *final)
                write_image(result, dst, overwrite=overwrite, protect=protect)
                size = (result.width, result.height)
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
        finally:
            _close(bar)
        summary.written.append(dst)
        if not quiet:
            log.info(
                "[%d/%d] %s -> %s (%dx%d -> %dx%d, %.1fs)",
                i,
                len(pairs),
                src,
                dst,
                loaded.width,
                loaded.height,
                *size,
                time.perf_counter() - t0,
            )
    _report(summary, quiet, time.perf_counter() - started)
    return summary


def _close(bar: object) -> None:
    close = getattr(bar, "close", None)
    if callable(close):
        close()


def _report(summary: UpscaleSummary, quiet: bool, seconds: float) -> None:
    if summary.failed:  # the errors again, together, after a long run's other output
        lines = "\n".join(f"  {reason}" for _, reason in summary.failed)
        log.warning("failed (%d):\n%s", summary.n_failed, lines)
    if not quiet:
        skipped = f", {summary.n_skipped} skipped (output exists)" if summary.skipped else ""
        log.info("done: %d written, %d failed%s (%.1fs)", summary.n_written, summary.n_failed, skipped, seconds)


def _fail(summary: UpscaleSummary, src: Path, message: str) -> None:
    line = " ".join(message.split())
    if not line.startswith(str(src)):
        line = f"{src}: {line}"
    log.error("error: %s", line)
    summary.failed.append((src, line))


__all__ = [
    "AUTO_TILE",
    "DEFAULT_OVERLAP",
    "InputFile",
    "OutputNaming",
    "UpscaleSummary",
    "alpha_strips",
    "collect_inputs",
    "method_device",
    "output_names",
    "outscale_size",
    "plan_files",
    "plan_outputs",
    "render_image",
    "render_png",
    "render_rows",
    "resize_pixels",
    "resolve_tile",
    "streams_to_png",
    "upscale_alpha",
    "upscale_files",
    "upscale_image",
]
