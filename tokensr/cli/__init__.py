"""The `tokensr` command. Each subcommand lives in its own module with
``add_arguments(parser)`` and ``run(args) -> int``; this file only dispatches."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

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


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(modules[args.command].run(args))  # type: ignore[attr-defined]
    except TokensrError as e:
        print(f"tokensr: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tokensr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
