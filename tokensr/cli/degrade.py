"""``tokensr degrade HR_DIR OUT_DIR``: build a fixed synthetic LR/HR benchmark.

Writes ``OUT/hr/<name>.png`` (the HR cropped at the bottom/right to a multiple of the scale,
or a centre crop with ``--crop``), ``OUT/lr/<name>.png`` (exactly HR/scale) and
``OUT/degradation_params.json`` (pipeline, scale, base seed and, per image, its seed and
every parameter drawn). Image ``i`` in name order uses seed ``seed + i``, so one image can
be regenerated alone. All files are written atomically.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from tokensr.data import ops
from tokensr.data.degradations import DEGRADATIONS, build_degradation
from tokensr.data.images import list_images, read_rgb, write_png
from tokensr.errors import OptionError
from tokensr.pretrained import atomic_write_bytes

log = logging.getLogger(__name__)

PARAMS_NAME = "degradation_params.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("hr_dir", metavar="HR_DIR", help="folder of clean HR images")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="output folder (gets hr/, lr/ and the params JSON)")
    parser.add_argument(
        "--pipeline", choices=DEGRADATIONS, default="realesrgan", help="degradation (default realesrgan)"
    )
    parser.add_argument("--scale", type=int, choices=(2, 4), default=4, help="downscale factor (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="base seed; image i uses seed+i (default 0)")
    parser.add_argument(
        "--crop",
        type=int,
        default=None,
        metavar="N",
        help="centre-crop each HR to at most NxN first (N a multiple of the scale)",
    )
    parser.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty OUT_DIR")
    parser.add_argument("-q", "--quiet", action="store_true", help="only print warnings and errors")


def _mod_crop(img: np.ndarray, scale: int, crop: int | None) -> np.ndarray:
    h, w = img.shape[:2]
    if crop is not None:
        ch, cw = min(h, crop), min(w, crop)
        y, x = (h - ch) // 2, (w - cw) // 2
        img = img[y : y + ch, x : x + cw]
        h, w = ch, cw
    return np.ascontiguousarray(img[: h - h % scale, : w - w % scale])


def _format_record(record: dict[str, Any]) -> str:
    """Readable JSON: header fields one per line, then one line per image."""
    head = {k: v for k, v in record.items() if k != "images"}
    lines = ["{"] + [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    items = [f"    {json.dumps(k)}: {json.dumps(v)}" for k, v in record["images"].items()]
    lines += ['  "images": {', ",\n".join(items), "  }", "}"]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    # --quiet keeps warnings and errors; reset otherwise (main() may run more than once in a process)
    logging.getLogger("tokensr").setLevel(logging.WARNING if args.quiet else logging.NOTSET)
    scale = int(args.scale)
    if args.seed < 0:
        raise OptionError("--seed must be non-negative")
    if args.crop is not None and (args.crop < scale or args.crop % scale):
        raise OptionError(f"--crop must be a positive multiple of the scale ({scale})")
    files = list_images(args.hr_dir)
    if not files:
        raise OptionError(f"no images found in {args.hr_dir}")
    stems = [p.stem for p in files]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise OptionError(f"several files share the name {dupes[0]!r}; names must be unique without extension")
    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise OptionError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise OptionError(f"{out} is not empty; pass --overwrite to write into it")
    degrade = build_degradation(args.pipeline)

    record: dict[str, Any] = {
        "pipeline": args.pipeline,
        "scale": scale,
        "seed": int(args.seed),
        "crop": args.crop,
        "seed_rule": "image i in name order uses np.random.default_rng(seed + i)",
        "images": {},
    }
    for i, path in enumerate(files):
        img = read_rgb(path)
        hr8 = _mod_crop(img, scale, args.crop)
        if hr8.shape[0] < scale or hr8.shape[1] < scale:
            raise OptionError(f"{path.name} is smaller than the scale")
        seed = int(args.seed) + i
        lr, params = degrade(ops.as_float_image(hr8), np.random.default_rng(seed), scale)
        write_png(out / "hr" / f"{path.stem}.png", hr8)
        write_png(out / "lr" / f"{path.stem}.png", ops.to_uint8(lr))
        record["images"][path.stem] = {"file": path.name, "seed": seed, **params}
        log.info("%s: %dx%d -> %dx%d", path.name, hr8.shape[1], hr8.shape[0], lr.shape[1], lr.shape[0])
    text = _format_record(record)
    atomic_write_bytes(out / PARAMS_NAME, lambda p: Path(p).write_text(text, encoding="utf-8"))
    if not args.quiet:
        print(f"wrote {len(files)} pairs to {out} ({args.pipeline}, x{scale}, seed {args.seed})")
    return 0
