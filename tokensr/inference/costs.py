"""What an upscale will cost before it runs: time from a measured speed table, peak memory
from a measured model of where the bytes go. Used by ``tokensr upscale --dry-run``.

Speeds (``SECONDS_PER_MP``) are wall-clock seconds of the method per *output* megapixel on 2
idle x86 CPU cores with torch's CPU build and default options:

- realsrt 17: the default (v3, token windows, cached cross-attention keys, 32 windows a call,
  192-token convolution tiles) on two 512-px LR crops of RealSet65, 2 idle cores, 2026-12-07:
  16.0-18.7 over three runs (realesrgan 14.6-16.0 in the same runs);
  ugtsr 16, iter 13, realesrgan 18: ``tokensr bench`` on idle cores, December 2026;
- femasr 70: the authors' full-size x4 network (34 M parameters), CPU time on a 128-px LR
  input on loaded cores (docs/femasr.md), so an upper bound;
- span 1.2: the benchmark's 4.9-5.6 s/MP on a loaded machine (docs/benchmarks/README.md),
  scaled by realesrgan's loaded/idle ratio (80-88 against 18);
- bicubic 0.15: the benchmark's figure.

Writing the result (quantising, PNG encoding) adds ``WRITE_SECONDS_PER_MP``, a rough figure
from the bicubic runs in docs/usage.md ("Memory and time"); it matters only for bicubic and
span. A GPU, more cores, other options or a busy machine change all of these: the estimate
gives the order of magnitude, not a promise.

Peak memory (``estimate``): the process's resident set is modelled as

- a constant per method: Python, torch and the loaded weights (``BASE_MB``);
- the decoded input: float32 RGB (``INPUT_BYTES_PER_PX`` per input pixel);
- the output buffer: its own uint8 / uint16 bytes (channels x bytes per sample per pixel),
  except where the output is streamed (``streamed``: a PNG that is not resized, written row by
  row as the tiles finish, `tokensr.inference.pipeline.render_png`): then no output buffer;
- the float band of tiles in flight: ``tile * scale`` output rows of the full output width,
  float32 RGB;
- the method's working memory: a fixed part (``WORK_FIXED_MB``: activations on the method's
  own internal tile) and ``WORK_BYTES_PER_TILE_PX`` per output pixel of a tile, or of the
  whole image when it runs in one pass;
- the PNG encoder's few megabytes are inside the constant.

The constants were fitted to ``/usr/bin/time -v`` peaks (docs/usage.md, "Memory and time").
"""

from __future__ import annotations

from dataclasses import dataclass

# Seconds of the method per output megapixel on 2 idle CPU cores (sources: module docstring).
SECONDS_PER_MP: dict[str, float] = {
    "realsrt": 17.0,
    "ugtsr": 16.0,
    "femasr": 70.0,
    "iter": 13.0,
    "realesrgan": 18.0,
    "span": 1.2,
    "bicubic": 0.15,
}
UNKNOWN_SECONDS_PER_MP = 25.0  # a method not in the table (the slowest known, rounded up)
# With precision bf16 (the default ``auto`` on a CPU with native bfloat16; see
# tokensr.inference.precision), the share of the float32 time a method takes: measured in
# ``tokensr bench`` runs of the same images in both precisions (docs/usage.md, "Precision":
# the 20 photos of the validation split, 2 idle cores, 2026-12-07). Methods not listed do not
# run torch networks (bicubic, the ncnn peers) or were not measured.
BF16_TIME_SHARE: dict[str, float] = {
    "realsrt": 0.63,
    "iter": 0.55,
    "ugtsr": 0.53,
}
WRITE_SECONDS_PER_MP = 0.4  # quantising and PNG-encoding the result

# Resident memory before the first image: interpreter, torch, the method's weights. Measured:
# peak RSS of `tokensr.load(name, scale=4)` (realesrgan includes ncnn and its model).
BASE_MB: dict[str, float] = {
    "realsrt": 300.0,
    "ugtsr": 280.0,
    "iter": 305.0,
    "realesrgan": 525.0,
    "span": 250.0,
    "bicubic": 230.0,
}
UNKNOWN_BASE_MB = 550.0
INPUT_BYTES_PER_PX = 16.0  # the decoded input as float32 RGB (12), plus padding and alpha
# Working memory of one method call: a fixed part (the networks' activations on the method's
# own internal tile or window, which does not grow with the image) plus a part per output
# pixel of the tile it is given (canvases, the tile's result, the blending window). Measured
# where docs/usage.md ("Memory and time") says so; the rest are marked as guesses.
WORK_FIXED_MB: dict[str, float] = {
    "realsrt": 550.0,  # fitted with the per-pixel part below to two runs (docs/usage.md)
    "ugtsr": 1420.0,  # measured: one 256-px LR tile (UGTSR's own tile size)
    "iter": 800.0,  # guess: 1250 measured on one 256-px pass; large images run in 128-px tiles
    "realesrgan": 200.0,  # guess (ncnn on 256-px LR tiles)
    "span": 150.0,  # guess
    "bicubic": 0.0,
}
UNKNOWN_WORK_FIXED_MB = 1500.0
WORK_BYTES_PER_TILE_PX: dict[str, float] = {
    # realsrt: 0.6 GB on 128-px LR tiles, 1.32 GB on one 512-px LR tile (method peak 1.62 GB
    # less 0.3 GB loaded), with its encoders and decoder in 192-token tiles: full-resolution
    # images of the tile (upsampled LR, decoded output, the wavelet fix's levels)
    "realsrt": 180.0,
    "ugtsr": 24.0,
    "iter": 24.0,
    "realesrgan": 24.0,
    "span": 24.0,
    "bicubic": 50.0,  # fitted to the 1 and 12 MP runs
}
UNKNOWN_WORK_BYTES = 80.0
BAND_BYTES_PER_PX = 12.0  # the float32 RGB band of tiles in flight (one buffer, reused)


@dataclass(frozen=True)
class CostEstimate:
    """Predicted cost of one image: seconds, peak resident bytes, output size in pixels."""

    seconds: float
    peak_bytes: int
    out_width: int
    out_height: int

    @property
    def out_megapixels(self) -> float:
        return self.out_width * self.out_height / 1e6


def estimate(
    method: str,
    width: int,
    height: int,
    scale: int,
    *,
    tile: int | None,
    channels: int = 3,
    bit_depth: int = 8,
    final: tuple[int, int] | None = None,
    streamed: bool = False,
    precision: str = "fp32",
) -> CostEstimate:
    """Cost of upscaling a ``width x height`` image by ``scale`` with ``method``.

    tile: the LR tile side actually used (None: one pass). channels, bit_depth: of the output.
    final: the (width, height) the result is resized to (``--outscale``), if any: its bytes
        are held next to the method's output while it is resized.
    streamed: the rows go straight to the output file (PNG, not resized), so the output is
        never held and its bytes are not counted.
    precision: the resolved precision the method runs in (``fp32`` or ``bf16``; see
        `BF16_TIME_SHARE`).
    """
    out_w, out_h = width * scale, height * scale
    out_px = out_w * out_h
    rate = SECONDS_PER_MP.get(method, UNKNOWN_SECONDS_PER_MP)
    if precision == "bf16":
        rate *= BF16_TIME_SHARE.get(method, 1.0)
    seconds = (rate + WRITE_SECONDS_PER_MP) * out_px / 1e6
    work = WORK_BYTES_PER_TILE_PX.get(method, UNKNOWN_WORK_BYTES)
    if tile is None:
        working = work * out_px
    else:
        band_rows = min(tile, height) * scale
        tile_px = (min(tile, height) * scale) * (min(tile, width) * scale)
        working = BAND_BYTES_PER_PX * band_rows * out_w + work * tile_px
    peak = (
        BASE_MB.get(method, UNKNOWN_BASE_MB) * 1e6
        + INPUT_BYTES_PER_PX * width * height
        + (0 if streamed else channels * (bit_depth // 8) * out_px)
        + working
        + WORK_FIXED_MB.get(method, UNKNOWN_WORK_FIXED_MB) * 1e6
    )
    if final is not None and final != (out_w, out_h):
        peak += channels * (bit_depth // 8) * final[0] * final[1]
    return CostEstimate(seconds=seconds, peak_bytes=int(peak), out_width=out_w, out_height=out_h)


def format_seconds(seconds: float) -> str:
    """``0.4s``, ``42s``, ``3m05s``, ``2h14m``."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_bytes(n: float) -> str:
    """``850 MB``, ``3.2 GB``."""
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


__all__ = [
    "BASE_MB",
    "BF16_TIME_SHARE",
    "WORK_FIXED_MB",
    "SECONDS_PER_MP",
    "WRITE_SECONDS_PER_MP",
    "CostEstimate",
    "estimate",
    "format_bytes",
    "format_seconds",
]
