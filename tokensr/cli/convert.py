"""`tokensr convert CHECKPOINT [CHECKPOINT ...] -o FOLDER`: an author's released checkpoint as
a tokensr weights folder, which `tokensr upscale --weights FOLDER` then runs.

The files are read with ``torch.load(weights_only=True)`` (no pickle code runs) or as
safetensors; the family is recognised from the keys unless ``--from`` names it.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", nargs="*", metavar="CHECKPOINT", help="the released file(s), in order")
    parser.add_argument("-o", "--output", metavar="FOLDER", help="the new weights folder (must not hold a model)")
    parser.add_argument("--from", dest="family", metavar="FAMILY", help="the checkpoint's family (default: guessed)")
    parser.add_argument("--list", action="store_true", help="list the families tokensr converts, with their sources")


def run(args: argparse.Namespace) -> int:
    from tokensr.convert import convert_files, families
    from tokensr.errors import OptionError

    if args.list:
        for fam in families():
            print(f"{fam.name}: {fam.title}\n  {fam.files}; {fam.licence}; {fam.source}")
        return 0
    if not args.checkpoints:
        raise OptionError("give the checkpoint file(s) to convert (or --list to see the families)")
    if not args.output:
        raise OptionError("give the output folder with -o FOLDER")
    fam, folder = convert_files(args.checkpoints, args.output, args.family)
    print(f"converted {fam.name} to {folder} (licence: {fam.licence})")
    print(f"run it with: tokensr upscale IMAGE -o OUT --weights {folder}")
    return 0
