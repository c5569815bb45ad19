"""Compare the statistics of tokensr's Real-ESRGAN degradation with the BasicSR-made reference.

For Set14 (HR cropped to a multiple of 4) this degrades every image with
``RealESRGANDegradation`` under 10 seeds and measures, per image,

- PSNR of the bicubic-upsampled LR against the HR (BasicSR convention: Y of YCbCr with
  MATLAB's coefficients, 8-bit images, ``crop_border = 4``);
- NIQE of the bicubic-upsampled LR (the LR itself is too small for NIQE's 96x96 blocks);
- PSNR of the LR against an area-downscaled HR (the check quoted in the reference README),

and the same numbers for ``shared/data/eval/set14_realesrgan_x4`` (made with BasicSR's own
functions). Upsampling is MATLAB-style bicubic, identical for both sets.

Run: ``PYTHONPATH=. python benchmarks/degradation_stats.py [--seeds 10] [--eval-dir DIR]``
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from tokensr.data import ops
from tokensr.data.images import list_images, read_rgb
from tokensr.data.realesrgan import RealESRGANConfig, RealESRGANDegradation

SCALE = 4
CROP_BORDER = 4


def y_channel(img8: np.ndarray) -> np.ndarray:
    """Y of YCbCr (ITU-R BT.601, MATLAB ``rgb2ycbcr``) in 8-bit units, float64."""
    x = img8.astype(np.float64) / 255.0
    return 16.0 + 65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]


def psnr_y(a8: np.ndarray, b8: np.ndarray, border: int = CROP_BORDER) -> float:
    ya, yb = y_channel(a8), y_channel(b8)
    if border:
        ya, yb = ya[border:-border, border:-border], yb[border:-border, border:-border]
    mse = float(np.mean((ya - yb) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def psnr_rgb(a8: np.ndarray, b8: np.ndarray) -> float:
    mse = float(np.mean((a8.astype(np.float64) - b8.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def upsample(lr8: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    return ops.to_uint8(ops.imresize_matlab(lr8.astype(np.float32) / 255.0, hw))


def load_niqe() -> tuple[Callable[[np.ndarray], float], str]:
    """tokensr.metrics.niqe if present (the package's metric), else a clear failure."""
    try:
        from tokensr.metrics.niqe import niqe  # type: ignore[import-not-found]
    except ImportError as e:  # pragma: no cover - depends on the checkout
        raise SystemExit(f"tokensr.metrics.niqe is not available ({e}); run with --no-niqe") from e

    def f(img8: np.ndarray) -> float:
        return float(niqe(img8))

    return f, "tokensr.metrics.niqe"


def measure(hr8: np.ndarray, lr8: np.ndarray, niqe: Callable[[np.ndarray], float] | None) -> dict[str, float]:
    h, w = hr8.shape[:2]
    up = upsample(lr8, (h, w))
    area = ops.to_uint8(
        cv2.resize(hr8.astype(np.float32) / 255.0, (w // SCALE, h // SCALE), interpolation=cv2.INTER_AREA)
    )
    out = {"psnr_up_y": psnr_y(up, hr8), "psnr_lr_vs_area": psnr_rgb(lr8, area)}
    if niqe is not None:
        out["niqe_up"] = niqe(up)
    return out


def summarise(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = rows[0].keys()
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--eval-dir", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "eval"))
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--no-niqe", action="store_true")
    ap.add_argument("--no-usm", action="store_true", help="degrade the unsharpened HR (ablation)")
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)

    eval_dir = Path(args.eval_dir)
    set14, ref = eval_dir / "set14", eval_dir / "set14_realesrgan_x4"
    if not set14.is_dir() or not ref.is_dir():
        print(f"missing {set14} or {ref}", file=sys.stderr)
        return 2
    niqe, niqe_name = (None, "off") if args.no_niqe else load_niqe()
    t0 = time.time()

    # reference set (BasicSR)
    ref_rows = []
    for p in list_images(ref / "hr"):
        hr8, lr8 = read_rgb(p), read_rgb(ref / "lr" / p.name)
        ref_rows.append(measure(hr8, lr8, niqe))
    ref_mean = summarise(ref_rows)

    # tokensr pipeline, several seeds
    deg = RealESRGANDegradation(RealESRGANConfig(usm=not args.no_usm))
    files = list_images(set14)
    per_seed = []
    for s in range(args.seeds):
        rows = []
        for i, p in enumerate(files):
            img = read_rgb(p)
            h, w = img.shape[:2]
            hr8 = np.ascontiguousarray(img[: h - h % SCALE, : w - w % SCALE])
            lr, _ = deg(ops.as_float_image(hr8), np.random.default_rng([s, i]), SCALE)
            rows.append(measure(hr8, ops.to_uint8(lr), niqe))
        per_seed.append(summarise(rows))
        print(f"seed {s}: " + ", ".join(f"{k} {v:.3f}" for k, v in per_seed[-1].items()), flush=True)
    ours = summarise(per_seed)
    spread = {k: float(np.std([r[k] for r in per_seed])) for k in ours}

    print(f"\nNIQE: {niqe_name}; {args.seeds} seeds x {len(files)} images; {time.time() - t0:.0f} s")
    print(f"{'statistic':<22}{'tokensr (mean over seeds)':>27}{'std of seed means':>19}{'reference':>11}{'diff':>8}")
    for k in ours:
        print(f"{k:<22}{ours[k]:>27.3f}{spread[k]:>19.3f}{ref_mean[k]:>11.3f}{ours[k] - ref_mean[k]:>8.3f}")
    ok_psnr = abs(ours["psnr_up_y"] - ref_mean["psnr_up_y"]) <= 1.0
    ok_niqe = "niqe_up" not in ours or abs(ours["niqe_up"] - ref_mean["niqe_up"]) <= 0.5
    print(f"within 1.0 dB PSNR: {ok_psnr}; within 0.5 NIQE: {ok_niqe if 'niqe_up' in ours else 'n/a'}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"ours": ours, "seed_std": spread, "reference": ref_mean, "per_seed": per_seed, "niqe": niqe_name},
                indent=2,
            )
            + "\n"
        )
    return 0 if ok_psnr and ok_niqe else 1


if __name__ == "__main__":
    sys.exit(main())
