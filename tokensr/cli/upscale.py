"""`tokensr upscale INPUT... -o OUT`: upscale image files and folders.

Exit status: 0 when every image was written (or skipped with ``--skip-existing``), 1 when
any input failed (each failure is one ``error:`` line on stderr; the other images are still
processed, and the run ends with the list of failures, also written to ``--fail-log``), 2 for
usage errors (bad options, unknown method or weights, CUDA asked for but missing).

``--dry-run`` reads only the image headers and prints, per file, the output size, the
estimated time and the estimated peak memory (`tokensr.inference.costs`; a PNG output that is
not resized is streamed to its file, so its bytes are not counted); nothing is written.
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
    add("inputs", nargs="+", metavar="INPUT", help="image files and/or folders (top level only, unless --recursive)")
    add(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="output folder (created if needed), or an output file (.png/.jpg/.webp/.tif/.bmp) for a single input file",
    )
    add(
        "--method",
        default=None,
        choices=list(METHODS),
        metavar="NAME",
        help=f"SR method: {', '.join(METHODS)} (default: the best bundled one for the scale, "
        f"{' > '.join(DEFAULT_PREFERENCE)} > {DEFAULT_METHOD}; or the one --weights is for)",
    )
    add("--weights", default=None, metavar="NAME_OR_PATH", help="bundled model name or weights folder")
    add("--scale", type=int, default=None, metavar="N", help="upscaling factor (default: the model's, else 4)")
    add(
        "--outscale",
        type=float,
        default=None,
        metavar="F",
        help="final size factor, any number (e.g. 2.5 or 8): the method runs at its scale, then the "
        "result is resized (area averaging to shrink, bicubic to enlarge)",
    )
    add("--suffix", default="", metavar="TEXT", help="add TEXT to every output name: photo_x4.png (default: none)")
    add(
        "--ext",
        default="png",
        metavar="EXT",
        help="output format in an output folder: png, jpg, webp, tif, bmp (default: png)",
    )
    add(
        "--recursive",
        action="store_true",
        help="also upscale images in sub-folders of folder inputs; outputs mirror the folder tree",
    )
    add(
        "--tile",
        type=int,
        default=None,
        metavar="PX",
        help="LR tile side in pixels (default: 512-px tiles for images larger than that; 0 = one pass)",
    )
    add("--tile-overlap", type=int, default=16, metavar="PX", help="overlap between tiles (default: 16)")
    add("--tile-batch", type=int, default=1, metavar="N", help="tiles per forward pass (default: 1)")
    add("--device", default="cpu", metavar="DEVICE", help="cpu or cuda (default: cpu)")
    add(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),  # tokensr.inference.precision.PRECISIONS
        default=None,
        help="the method's arithmetic: auto = bf16 on a CPU with native bfloat16, else fp32; "
        "fp16 needs CUDA (default: auto)",
    )
    add("--fp16", action="store_true", help="the same as --precision fp16 (CUDA only)")
    add("--seed", type=int, default=None, metavar="N", help="seed torch, numpy and random (for sampling methods)")
    add("--overwrite", action="store_true", help="replace existing output files (never an input file)")
    add(
        "--skip-existing",
        action="store_true",
        help="skip inputs whose output file exists (resume an interrupted folder run)",
    )
    add("--fail-log", default=None, metavar="FILE", help="write the failed inputs and their reasons to FILE")
    add(
        "--dry-run",
        action="store_true",
        help="print each output's size, estimated time and peak memory; upscale nothing",
    )
    add("-q", "--quiet", action="store_true", help="only print warnings and errors (no progress bar)")
    add(
        "--max-pixels", type=int, default=None, metavar="N", help="refuse inputs with more pixels (default: 50,000,000)"
    )
    # Options forwarded to the method only when given (bicubic ignores them).
    add("--steps", type=int, default=None, metavar="N", help="token-generation steps (iterative methods)")
    add("--alpha", type=float, default=None, metavar="F", help="confidence threshold (ITER-style methods)")
    add(
        "--save-steps",
        nargs="?",
        const=True,
        default=None,
        metavar="DIR",
        help="also save a figure of every step and its confidence map (iterative methods) "
        "into DIR (default: a steps/ folder beside the outputs)",
    )
    add(
        "--confidence",
        choices=("critic", "generator"),
        default=None,
        help="RealSRT: which network scores the tokens (default: critic; generator = MaskGIT-style)",
    )
    add(
        "--no-ccm",
        dest="ccm",
        action="store_false",
        default=None,
        help="RealSRT: decode without the conditional controlling module",
    )
    add(
        "--color-fix",
        choices=("wavelet", "adain", "none"),
        default=None,
        help="token methods: correct colours towards the LR input (default: the method's, wavelet)",
    )
    add(
        "--color-levels",
        type=int,
        default=None,
        metavar="N",
        help="token methods: depth of the wavelet colour fix; fewer levels keep more of the LR "
        "(fidelity), more keep more generated texture (default: the method's)",
    )


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
    if args.tile is not None and args.tile != 0 and args.tile < 8:
        raise OptionError(f"--tile must be 0 (one pass) or at least 8 px, got {args.tile}")
    if args.tile_overlap < 0:
        raise OptionError(f"--tile-overlap must be >= 0, got {args.tile_overlap}")
    if args.tile_batch < 1:
        raise OptionError(f"--tile-batch must be >= 1, got {args.tile_batch}")
    if args.max_pixels is not None and args.max_pixels < 1:
        raise OptionError(f"--max-pixels must be >= 1, got {args.max_pixels}")
    if args.skip_existing and args.overwrite:
        raise OptionError("--skip-existing and --overwrite contradict each other; give one of them")
    if args.outscale is not None and not 0 < args.outscale <= 64:
        raise OptionError(f"--outscale must be > 0 and at most 64, got {args.outscale}")


def _naming(args: argparse.Namespace) -> Any:
    from tokensr.inference.pipeline import OutputNaming

    return OutputNaming(suffix=args.suffix, ext=args.ext, recursive=args.recursive)


def _check_fail_log(args: argparse.Namespace) -> Path | None:
    """The --fail-log path, refused when it is a folder or one of the input files."""
    if args.fail_log is None:
        return None
    from tokensr.io import same_path

    log_path = Path(args.fail_log)
    if log_path.is_dir():
        raise OptionError(f"--fail-log {log_path} is a folder; give a file name")
    for item in args.inputs:
        if Path(item).is_file() and same_path(item, log_path):
            raise OptionError(f"--fail-log {log_path} is one of the inputs; give another file name")
    return log_path


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
    naming = _naming(args)
    fail_log = _check_fail_log(args)
    device = check_device(args.device)
    precision = _precision(args, device)
    if args.dry_run:
        return _dry_run(args, precision)
    if args.seed is not None:
        seed_everything(args.seed)
    options = method_options(args)
    if args.weights is not None:
        from tokensr.methods import build_method

        method_name, folder, scale = _weights_method(args)
        method = build_method(method_name, scale=scale, weights=str(folder), device=device, **options)
    else:
        method = load(args.method or default_method(args.scale), scale=args.scale, device=device, **options)
    logging.getLogger(__name__).info("method: %s x%d on %s (%s)", method.name, method.scale, device, precision)
    summary = upscale_files(
        args.inputs,
        args.output,
        method,
        tile=args.tile,
        overlap=args.tile_overlap,
        batch=args.tile_batch,
        device=device,
        overwrite=args.overwrite,
        skip_existing=args.skip_existing,
        quiet=args.quiet,
        max_pixels=args.max_pixels,
        naming=naming,
        outscale=args.outscale,
        precision=precision,
    )
    if fail_log is not None:
        from tokensr.io.write import atomic_write

        atomic_write(fail_log, summary.fail_log().encode("utf-8"), overwrite=True)
    return 0 if summary.ok else 1


def _precision(args: argparse.Namespace, device: str) -> str:
    """--precision (or its shorthand --fp16) resolved for ``device``: fp32, bf16 or fp16."""
    from tokensr.inference.precision import DEFAULT_PRECISION, resolve_precision

    if args.fp16 and args.precision not in (None, "fp16"):
        raise OptionError(f"--fp16 and --precision {args.precision} contradict each other; give one of them")
    asked = "fp16" if args.fp16 else args.precision or DEFAULT_PRECISION
    if asked == "fp16" and not device.startswith("cuda"):
        flag = "--fp16" if args.fp16 else "--precision fp16"
        raise OptionError(f"{flag} needs --device cuda (this run is on {device}; use --precision fp32 or bf16)")
    return resolve_precision(asked, device)


def _weights_method(args: argparse.Namespace) -> tuple[str, Path, int]:
    """(method name, weights folder, scale) for --weights, checked against --method."""
    from tokensr.api import method_for_weights

    method_name, folder, config = method_for_weights(args.weights)
    if args.method is not None and args.method != method_name:
        raise OptionError(f"--weights {args.weights} holds a {method_name} model, but --method {args.method} was given")
    return method_name, folder, args.scale or int(config.get("scale", 4))


def _dry_run(args: argparse.Namespace, precision: str) -> int:
    """Print what each file would cost; read headers only, load no weights, write nothing."""
    from tokensr.errors import TokensrError
    from tokensr.inference.costs import estimate, format_bytes, format_seconds
    from tokensr.inference.pipeline import outscale_size, plan_files, resolve_tile, streams_to_png
    from tokensr.io import check_output_path, check_output_size, probe_image
    from tokensr.methods import default_method

    if args.weights is not None:
        method_name, _, scale = _weights_method(args)
    else:
        method_name, scale = args.method or default_method(args.scale), args.scale or 4
    pairs, missing = plan_files(args.inputs, args.output, _naming(args))
    failed = [message for _, message in missing]
    protect = [src for src, _ in pairs]
    total_seconds, peak = 0.0, 0
    print(f"dry run: {method_name} x{scale} ({precision}), {len(pairs)} image(s); times are for 2 CPU cores")
    for message in failed:
        print(f"would fail: {message}")
    for src, dst in pairs:
        try:
            header = probe_image(src, max_pixels=args.max_pixels)
            final = outscale_size(header.width, header.height, args.outscale or scale)
            check_output_size(dst, *final)
            note = ""
            if args.skip_existing and dst.is_file():
                note = "  (exists: skipped)"
            else:
                check_output_path(dst, overwrite=args.overwrite, protect=protect)
        except TokensrError as e:
            failed.append(str(e))
            print(f"would fail: {e}")
            continue
        one_pass = args.tile is None and args.save_steps  # as resolve_tile does for step figures
        tile = None if one_pass else resolve_tile(args.tile, header.height, header.width)
        cost = estimate(
            method_name,
            header.width,
            header.height,
            scale,
            tile=tile,
            channels=header.channels,
            bit_depth=header.bit_depth,
            final=final,
            streamed=streams_to_png(dst, header.width, header.height, scale, final),
            precision=precision,
        )
        if not note:
            total_seconds += cost.seconds
            peak = max(peak, cost.peak_bytes)
        print(
            f"{src} -> {dst}: {header.width}x{header.height} -> {final[0]}x{final[1]} "
            f"({final[0] * final[1] / 1e6:.1f} MP), ~{format_seconds(cost.seconds)}, "
            f"peak ~{format_bytes(cost.peak_bytes)}{note}"
        )
    print(f"total: ~{format_seconds(total_seconds)}, peak ~{format_bytes(peak)}; {len(failed)} would fail")
    return 1 if failed else 0
