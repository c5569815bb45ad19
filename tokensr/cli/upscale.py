"""`tokensr upscale INPUT... -o OUT`: upscale image files and folders.

Exit status: 0 when every image was written, 1 when any input failed (each failure is one
``error:`` line on stderr; the other images are still processed), 2 for usage errors (bad
options, unknown method or weights, CUDA asked for but missing).
"""
from __future__ import annotations

import argparse
import logging
import random
import sys
from pathlib import Path
from typing import Any

from tokensr.errors import OptionError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tokensr.methods import DEFAULT_METHOD, DEFAULT_PREFERENCE, METHODS

    add = parser.add_argument
    add("inputs", nargs="+", metavar="INPUT", help="image files and/or folders (top level only)")
    add("-o", "--output", required=True, metavar="OUT",
        help="output folder (created if needed), or an output file (.png/.jpg/.webp/.tif/.bmp) "
        "for a single input file")
    add("--method", default=None, choices=list(METHODS), metavar="NAME",
        help=f"SR method: {', '.join(METHODS)} (default: the best bundled one for the scale, "
        f"{' > '.join(DEFAULT_PREFERENCE)} > {DEFAULT_METHOD}; or the one --weights is for)")
    add("--weights", default=None, metavar="NAME_OR_PATH", help="bundled model name or weights folder")
    add("--scale", type=int, default=None, metavar="N", help="upscaling factor (default: the model's, else 4)")
    add("--tile", type=int, default=None, metavar="PX", help="process the image in PX-pixel tiles to bound memory")
    add("--tile-overlap", type=int, default=16, metavar="PX", help="overlap between tiles (default: 16)")
    add("--tile-batch", type=int, default=1, metavar="N", help="tiles per forward pass (default: 1)")
    add("--device", default="cpu", metavar="DEVICE", help="cpu or cuda (default: cpu)")
    add("--seed", type=int, default=None, metavar="N", help="seed torch, numpy and random (for sampling methods)")
    add("--overwrite", action="store_true", help="replace existing output files (never an input file)")
    add("-q", "--quiet", action="store_true", help="only print warnings and errors")
    add("--max-pixels", type=int, default=None, metavar="N",
        help="refuse inputs with more pixels (default: 50,000,000)")
    # Options forwarded to the method only when given (bicubic ignores them).
    add("--steps", type=int, default=None, metavar="N", help="token-generation steps (iterative methods)")
    add("--alpha", type=float, default=None, metavar="F", help="confidence threshold (ITER-style methods)")
    add("--save-steps", nargs="?", const=True, default=None, metavar="DIR",
        help="also save a figure of every step and its confidence map (iterative methods) "
        "into DIR (default: a steps/ folder beside the outputs)")
    add("--confidence", choices=("critic", "generator"), default=None,
        help="RealSRT: which network scores the tokens (default: critic; generator = MaskGIT-style)")
    add("--no-ccm", dest="ccm", action="store_false", default=None,
        help="RealSRT: decode without the conditional controlling module")
    add("--color-fix", choices=("wavelet", "adain", "none"), default=None,
        help="token methods: correct colours towards the LR input (default: the method's, wavelet)")
    add("--color-levels", type=int, default=None, metavar="N",
        help="token methods: depth of the wavelet colour fix; fewer levels keep more of the LR "
        "(fidelity), more keep more generated texture (default: the method's)")


def method_options(args: argparse.Namespace) -> dict[str, Any]:
    """The pass-through options the user actually gave."""
    options: dict[str, Any] = {}
    for key in ("steps", "alpha", "save_steps", "confidence", "ccm", "color_fix", "color_levels"):
        value = getattr(args, key, None)
        if value is not None:
            options[key] = value
    if options.get("save_steps") is True:
        out = Path(args.output)
        options["save_steps"] = str((out.parent if out.suffix else out) / "steps")
    return options


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _check_numbers(args: argparse.Namespace) -> None:
    if args.scale is not None and args.scale < 1:
        raise OptionError(f"--scale must be >= 1, got {args.scale}")
    if args.tile is not None and args.tile < 8:
        raise OptionError(f"--tile must be at least 8 px, got {args.tile}")
    if args.tile_overlap < 0:
        raise OptionError(f"--tile-overlap must be >= 0, got {args.tile_overlap}")
    if args.tile_batch < 1:
        raise OptionError(f"--tile-batch must be >= 1, got {args.tile_batch}")
    if args.max_pixels is not None and args.max_pixels < 1:
        raise OptionError(f"--max-pixels must be >= 1, got {args.max_pixels}")


def run(args: argparse.Namespace) -> int:
    # --quiet keeps warnings and errors; reset otherwise (main() may run more than once in a process)
    logging.getLogger("tokensr").setLevel(logging.WARNING if args.quiet else logging.NOTSET)
    try:
        return _run(args)
    except OptionError as e:
        print(f"tokensr upscale: error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from tokensr.api import check_device, load
    from tokensr.inference.pipeline import upscale_files
    from tokensr.methods import default_method

    _check_numbers(args)
    device = check_device(args.device)
    if args.seed is not None:
        seed_everything(args.seed)
    options = method_options(args)
    if args.weights is not None:
        from tokensr.api import method_for_weights
        from tokensr.methods import build_method

        method_name, folder, config = method_for_weights(args.weights)
        if args.method is not None and args.method != method_name:
            raise OptionError(
                f"--weights {args.weights} holds a {method_name} model, but --method {args.method} was given"
            )
        scale = args.scale or int(config.get("scale", 4))
        method = build_method(method_name, scale=scale, weights=str(folder), device=device, **options)
    else:
        method = load(args.method or default_method(args.scale), scale=args.scale, device=device, **options)
    logging.getLogger(__name__).info("method: %s x%d on %s", method.name, method.scale, device)
    summary = upscale_files(
        args.inputs,
        args.output,
        method,
        tile=args.tile,
        overlap=args.tile_overlap,
        batch=args.tile_batch,
        device=device,
        overwrite=args.overwrite,
        quiet=args.quiet,
        max_pixels=args.max_pixels,
    )
    return 0 if summary.ok else 1
