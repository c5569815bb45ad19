"""The `tokensr` command. Each subcommand lives in its own module with
``add_arguments(parser)`` and ``run(args) -> int``; this file only dispatches."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
from types import FrameType

from tokensr.errors import TokensrError

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "upscale": ("tokensr.cli.upscale", "upscale images"),
    "models": ("tokensr.cli.models", "list bundled models and their model cards"),
    "degrade": ("tokensr.cli.degrade", "build a synthetic LR/HR benchmark from HR photos"),
    "metrics": ("tokensr.cli.metrics", "image-quality metrics for one pair or two folders"),
    "bench": ("tokensr.cli.bench", "run methods side by side on datasets"),
    "train": ("tokensr.cli.train", "train a model from a YAML config"),
    "web": ("tokensr.cli.web", "a local web page: drop photos in, download them upscaled"),
    "convert": ("tokensr.cli.convert", "convert an author's released checkpoint into a weights folder"),
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    parser = argparse.ArgumentParser(prog="tokensr", description="Real-world image super-resolution.")
    from tokensr import __version__

    parser.add_argument("--version", action="version", version=f"tokensr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules: dict[str, object] = {}
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name == module_name:
                continue  # subcommand not part of this build
            raise
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)  # type: ignore[attr-defined]
        modules[name] = module
    return parser, modules


class Terminated(BaseException):
    """SIGTERM (``kill``, a batch system's time limit), raised in the main thread like Ctrl-C's
    KeyboardInterrupt, so that ``finally`` blocks run: a half-written output's temporary file is
    removed instead of being left next to the user's files. A BaseException, so that a folder
    run's per-file ``except Exception`` does not swallow it and go on with the next file."""


_MAIN_PID = os.getpid()


def _terminate(signum: int, frame: FrameType | None) -> None:
    if os.getpid() != _MAIN_PID:  # a forked worker (data loading) inherited this: die as usual
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return 2
    global _MAIN_PID
    _MAIN_PID = os.getpid()
    in_main = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        return int(modules[args.command].run(args))  # type: ignore[attr-defined]
    except TokensrError as e:
        print(f"tokensr: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tokensr: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("tokensr: terminated", file=sys.stderr)
        return 143
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, before)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
