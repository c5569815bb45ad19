"""`tokensr web`: a local page to drop photos into and download them upscaled.

Needs the ``web`` extra (``pip install 'tokensr[web]'``). Listens on 127.0.0.1 (this machine
only) unless ``--host`` says otherwise; needs no internet. Exit status 0 when stopped with
Ctrl+C, 2 for bad options or a missing extra, 1 when the server cannot start (port taken).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from tokensr.errors import OptionError
from tokensr.web import DEFAULT_HOST, DEFAULT_PORT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--host",
        default=DEFAULT_HOST,
        metavar="ADDRESS",
        help=f"address to listen on (default: {DEFAULT_HOST}, this machine only; 0.0.0.0 = every network)",
    )
    add("--port", type=int, default=DEFAULT_PORT, metavar="N", help=f"port to listen on (default: {DEFAULT_PORT})")
    add("--device", default="cpu", metavar="DEVICE", help="cpu or cuda (default: cpu)")
    add(
        "--max-pixels",
        type=int,
        default=None,
        metavar="N",
        help="refuse uploads with more pixels (default: 50,000,000, or TOKENSR_MAX_PIXELS)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        serve = _checked(args)
    except OptionError as e:
        print(f"tokensr web: error: {e}", file=sys.stderr)
        return 2
    try:
        serve(args.host, args.port, device=args.device, max_pixels=args.max_pixels)
    except OSError:  # the port is taken, or the address is not this machine's
        print(
            f"tokensr web: error: cannot listen on {args.host}:{args.port}: is another server using that port "
            "(choose another with --port), or is the address not this machine's?",
            file=sys.stderr,
        )
        return 1
    return 0


def _checked(args: argparse.Namespace) -> Callable[..., None]:
    """Check the options and the web extra; return the `serve` function."""
    from tokensr.api import check_device

    if not 1 <= args.port <= 65535:
        raise OptionError(f"--port must be in 1..65535, got {args.port}")
    if args.max_pixels is not None and args.max_pixels < 1:
        raise OptionError(f"--max-pixels must be >= 1, got {args.max_pixels}")
    if not args.host.strip():
        raise OptionError("--host must not be empty")
    args.device = check_device(args.device)
    try:
        from tokensr.web.app import serve
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "tokensr":
            raise
        raise OptionError(f"tokensr web needs the package '{e.name}': pip install 'tokensr[web]'") from e
    return serve
