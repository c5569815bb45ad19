"""`tokensr train CONFIG [--resume] [key=value ...]`: run a training config.

Works under torchrun for data-parallel training on several processes/GPUs::

    torchrun --nproc_per_node 4 -m tokensr train configs/vqgan_paper.yaml

See docs/training.md.
"""

from __future__ import annotations

import argparse
import logging
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML training config (see configs/)")
    parser.add_argument(
        "overrides",
        nargs=argparse.REMAINDER,
        metavar="key=value",
        help="override config values, e.g. max_steps=100 run_dir=runs/x data.root=photos/ optim.g.lr=2e-4",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest valid checkpoint in run_dir (start fresh if there is none)",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run(args: argparse.Namespace) -> int:
    from tokensr.errors import OptionError
    from tokensr.train.config import load_config
    from tokensr.train.distributed import env_world

    overrides = []
    for item in args.overrides:  # flags may also follow the overrides
        if item == "--resume":
            args.resume = True
        elif item == "--print-config":
            args.print_config = True
        elif item.startswith("-"):
            raise OptionError(f"unknown option {item} (overrides are key=value)")
        else:
            overrides.append(item)
    config = load_config(args.config, overrides)
    if args.print_config:
        sys.stdout.write(config.to_yaml())
        return 0
    rank, world, _ = env_world()
    if rank != 0:  # one voice: the other ranks report warnings and errors only
        logging.getLogger().setLevel(logging.WARNING)

    from tokensr.train.engine import train

    trainer = train(config, resume=args.resume)
    if rank == 0:
        where = trainer.export_dir
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in trainer.last_val.items())
        print(
            f"trained to step {trainer.step}; model in {where}" + (f" ({metrics})" if metrics else ""), file=sys.stderr
        )
    return 0
