"""Throughput of on-the-fly LR/HR pair synthesis (256-px HR crops, x4) on the CPU.

Measures pairs/s of ``HRCropDataset`` through a ``DataLoader`` (batch 8) with 0, 1 and 2
workers for each degradation -- cold (each item decodes a new photo) and warm (an LRU that
holds every photo, after one epoch: the steady state of a training run with
``cache_images`` >= the number of photos) -- plus the cost of the pieces: image decoding,
the degradation alone, and reading prebuilt pairs from ``cache_dir``.

HR photos: ``--hr-dir`` (default ``../shared/data/eval/set14`` when present), else 12
synthetic 512x512 images written to a temporary folder.

Run: ``PYTHONPATH=. python benchmarks/degradation_speed.py [--items 96] [--workers 0 1 2]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tokensr.data import build_degradation, ops
from tokensr.data.datasets import HRCropDataset
from tokensr.data.images import list_images, read_rgb


def synthetic_folder(root: Path, n: int = 12, size: int = 512) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        base = rng.integers(0, 256, size=(size // 16, size // 16, 3)).astype(np.float32)
        img = cv2.resize(base, (size, size), interpolation=cv2.INTER_CUBIC) + rng.normal(0, 8, (size, size, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / f"synth{i:02d}.png")
    return root


def loader_rate(ds: HRCropDataset, workers: int, batch: int, warm_epochs: int = 0) -> float:
    """Pairs/s of one pass over ``ds``; with ``warm_epochs`` the workers (persistent) first run
    that many untimed epochs, so an LRU that holds every image serves decoded images."""
    dl = DataLoader(
        ds,
        batch_size=batch,
        num_workers=workers,
        shuffle=False,
        persistent_workers=bool(workers and warm_epochs),
        prefetch_factor=4 if workers else None,
    )
    for _ in range(warm_epochs):
        for _b in dl:
            pass
    it = iter(dl)
    next(it)  # start-up (worker spawn, first decode) is not steady-state throughput
    t0 = time.perf_counter()
    n = 0
    for b in it:
        n += b["hr"].shape[0]
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_hr = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "eval" / "set14"
    ap.add_argument("--hr-dir", default=str(default_hr) if default_hr.is_dir() else None)
    ap.add_argument("--items", type=int, default=96, help="pairs per measurement (after one warm-up batch)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--pipelines", nargs="+", default=["realesrgan", "bsrgan", "bsrgan_plus"])
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    tmp = tempfile.TemporaryDirectory()
    hr_dir = Path(args.hr_dir) if args.hr_dir else synthetic_folder(Path(tmp.name))
    files = list_images(hr_dir)
    print(
        f"HR: {hr_dir} ({len(files)} images); crop {args.crop}, x{args.scale}; "
        f"cores {os.cpu_count()}, load avg {os.getloadavg()[0]:.1f}"
    )

    # pieces, single process
    t0 = time.perf_counter()
    imgs = [read_rgb(p) for p in files]
    dec_ms = (time.perf_counter() - t0) / len(files) * 1e3
    print(f"decode: {dec_ms:.1f} ms per image (mean {np.mean([i.size for i in imgs]) / 3e6:.2f} Mpx)")
    rng = np.random.default_rng(0)
    crops = []
    for k in range(16):
        im = imgs[k % len(imgs)]
        y = int(rng.integers(0, max(1, im.shape[0] - args.crop + 1)))
        x = int(rng.integers(0, max(1, im.shape[1] - args.crop + 1)))
        c = im[y : y + args.crop, x : x + args.crop]
        if c.shape[:2] == (args.crop, args.crop):
            crops.append(ops.as_float_image(c))
    for name in args.pipelines:
        deg = build_degradation(name)
        t0 = time.perf_counter()
        n = 48
        for k in range(n):
            deg(crops[k % len(crops)], np.random.default_rng(k), args.scale)
        print(f"degradation only, {name}: {(time.perf_counter() - t0) / n * 1e3:.1f} ms per pair (1 thread)")

    print(f"\n{'pipeline':<13}{'workers':>8}{'LRU':>6}{'pairs/s':>10}")
    rows = []
    for name in args.pipelines:
        for w in args.workers:
            ds = HRCropDataset(
                hr_dir,
                crop_size=args.crop,
                scale=args.scale,
                degradation=name,
                seed=0,
                length=args.items + args.batch,
                cache_images=8,
            )
            r = loader_rate(ds, w, args.batch)
            rows.append((name, w, r))
            print(f"{name:<13}{w:>8}{8:>6}{r:>10.1f}", flush=True)
    n_img = min(len(files), args.items + args.batch)
    for name in args.pipelines:
        for w in [w for w in args.workers if w]:
            ds = HRCropDataset(
                hr_dir,
                crop_size=args.crop,
                scale=args.scale,
                degradation=name,
                seed=0,
                length=args.items + args.batch,
                cache_images=n_img,
            )
            r = loader_rate(ds, w, args.batch, warm_epochs=1)
            print(f"{name:<13}{w:>8}{n_img:>6}{r:>10.1f}   (warm: every image already decoded)", flush=True)
    ds = HRCropDataset(
        hr_dir,
        crop_size=args.crop,
        scale=args.scale,
        degradation=args.pipelines[0],
        length=args.items + args.batch,
        cache_images=0,
    )
    print(f"{args.pipelines[0]:<13}{0:>8}{0:>6}{loader_rate(ds, 0, args.batch):>10.1f}   (decode every item)")
    with tempfile.TemporaryDirectory() as cache:
        ds = HRCropDataset(
            hr_dir,
            crop_size=args.crop,
            scale=args.scale,
            degradation=args.pipelines[0],
            length=args.items + args.batch,
            cache_dir=cache,
        )
        for i in range(len(ds)):
            ds[i]
        print(
            f"{args.pipelines[0]:<13}{0:>8}{'-':>6}{loader_rate(ds, 0, args.batch):>10.1f}"
            "   (prebuilt pairs, cache_dir)"
        )
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
