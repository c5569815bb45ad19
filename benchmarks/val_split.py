"""Build tokensr's validation split: the photos listed in benchmarks/val_split.txt, centre-cropped
and degraded with a fixed seed, as ``OUT/hr`` + ``OUT/lr`` pairs for ``tokensr bench``.

Defaults (stride, colour levels, alpha, which checkpoint to bundle) are chosen on this split;
Set14 and RealSet65 are reported as test sets only.

The split recorded in docs before 2026-12-07's degradation update was built with the old
Real-ESRGAN JPEG and area resize (libjpeg, OpenCV INTER_AREA); the pipeline's defaults are now
BasicSR's DiffJPEG and torch's area pooling (docs/degradations.md), so a split built today has
other LR images: compare a candidate with the bundled model on the same build, never with
numbers recorded from another one.

    PYTHONPATH=. python benchmarks/val_split.py runs/val_split [--train ../shared/data/train]
        [--pipeline realesrgan] [--crop 384] [--seed 9000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from tokensr.cli import main as tokensr_main

LIST = Path(__file__).with_name("val_split.txt")


def split_names(path: Path = LIST) -> list[str]:
    """The file names of the split (comments and blank lines skipped)."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="output folder (gets hr/, lr/ and degradation_params.json)")
    p.add_argument("--train", default="../shared/data/train", help="the training photos the split is taken from")
    p.add_argument("--pipeline", default="realesrgan")
    p.add_argument("--crop", type=int, default=384, help="centre crop of each HR photo (default 384)")
    p.add_argument("--seed", type=int, default=9000, help="base degradation seed (default 9000)")
    p.add_argument("--scale", type=int, default=4)
    args = p.parse_args(argv)
    names = split_names()
    train = Path(args.train)
    missing = [n for n in names if not (train / n).is_file()]
    if missing:
        print(
            f"val_split: error: {len(missing)} listed photos are not in {train} (first: {missing[0]})", file=sys.stderr
        )
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        for n in names:
            (Path(tmp) / n).symlink_to((train / n).resolve())
        return tokensr_main(
            [
                "degrade",
                tmp,
                args.out,
                "--pipeline",
                args.pipeline,
                "--scale",
                str(args.scale),
                "--crop",
                str(args.crop),
                "--seed",
                str(args.seed),
                "--overwrite",
                "-q",
            ]
        )


if __name__ == "__main__":
    sys.exit(main())
