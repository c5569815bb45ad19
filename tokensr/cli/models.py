"""`tokensr models [NAME]`: list the bundled models, or print one model's card."""

from __future__ import annotations

import argparse
from pathlib import Path

from tokensr.errors import OptionError

CARD_NAME = "README.md"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", default=None, metavar="NAME", help="print this bundled model's card")


def run(args: argparse.Namespace) -> int:
    from tokensr import pretrained
    from tokensr.methods import METHODS, default_method

    names = pretrained.bundled_names()
    if args.name is None:
        if names:
            print("Bundled models:")
            for name in names:
                print(f"  {name}  ({_summary(pretrained.WEIGHTS_DIR / name)})")
        else:
            print("No bundled models in this version of tokensr.")
        print(f"Methods: {', '.join(METHODS)} (default: {default_method(4)} at x4, {default_method(2)} at x2)")
        print("Use: tokensr upscale IMAGE -o OUT --method NAME [--weights NAME_OR_FOLDER]")
        return 0
    if args.name not in names:
        known = ", ".join(names) or "none"
        raise OptionError(f"no bundled model '{args.name}' (bundled: {known})")
    card = pretrained.WEIGHTS_DIR / args.name / CARD_NAME
    if not card.is_file():
        print(f"{args.name}: no model card ({CARD_NAME}) in {card.parent}")
        return 0
    print(card.read_text(encoding="utf-8").rstrip())
    return 0


def _summary(folder: Path) -> str:
    """'<model_type>, x<scale>' from a model's config.json."""
    from tokensr import pretrained

    try:
        config = pretrained.read_config(folder)
    except Exception:
        return "unreadable config"
    parts = [str(config.get("model_type", "?"))]
    if "scale" in config:
        parts.append(f"x{config['scale']}")
    return ", ".join(parts)
