"""UGTSR feature-matching accuracy (the paper's Fig. 7) as a Markdown table.

For each model and data set: the share of LR tokens whose LQ feature's nearest code equals
the HR image's own code (top-1), the share where the HR code is among the 3 / 5 nearest
codes (top-3 / top-5), and the share where the code the model finally decodes (after its
Top-k fusion) is the HR code. See ``tokensr.methods.ugtsr.matching``.

Pairs come from ``--pairs ROOT`` (``hr/`` + ``lr/`` folders, e.g. ``set14_realesrgan_x4``) or
are synthesised from ``--hr FOLDER`` with ``--degradation`` (default ``bsrgan``, as the paper)
and a fixed seed per image (HR crops of ``--crop`` pixels, centre of each image).

Run::

    PYTHONPATH=. python benchmarks/ugtsr_matching_accuracy.py \\
        --weights k1=runs/ugtsr_udl_k1/export k3=ugtsr-small-x4 k5=runs/ugtsr_udl_k5/export \\
        --pairs ../shared/data/eval/set14_realesrgan_x4 --hr ../shared/data/eval/set14 \\
        --out docs/ugtsr_matching_accuracy.md

``--weights`` takes folders or bundled names, optionally ``LABEL=``-prefixed. ``--top-k 1``
also measures each model with plain nearest matching (its ``final`` column then equals top-1).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from tokensr.methods.ugtsr.matching import DEFAULT_KS, MatchingAccuracy, add_pair, markdown_table
from tokensr.methods.ugtsr.model import UGTSR


def parse_weights(items: list[str]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        label, sep, path = item.partition("=")
        out.append((label, path) if sep and path else (Path(item).name if Path(item).is_dir() else item, item))
    return out


def paired_folder(root: Path, scale: int, max_images: int | None) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    from tokensr.data.datasets import PairedFolderDataset

    ds = PairedFolderDataset(root, scale=scale)
    for i in range(len(ds) if max_images is None else min(len(ds), max_images)):
        item = ds[i]
        yield item["name"], item["lr"], item["hr"]


def synthetic_pairs(
    hr_dir: Path, scale: int, degradation: str, crop: int, seed: int, max_images: int | None
) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    from tokensr.data import build_degradation
    from tokensr.data.datasets import to_tensor
    from tokensr.data.images import list_images, read_rgb

    deg = build_degradation(degradation)
    files = list_images(hr_dir)[: max_images or None]
    for i, path in enumerate(files):
        img = read_rgb(path).astype(np.float32) / 255.0
        h, w = img.shape[:2]
        c = min(crop, h, w)
        c -= c % scale
        top, left = (h - c) // 2, (w - c) // 2
        hr = np.ascontiguousarray(img[top : top + c, left : left + c])
        lr, _ = deg(hr, np.random.default_rng([seed, i]), scale)
        yield path.stem, to_tensor(lr), to_tensor(hr)


def main(argv: list[str] | None = None) -> int:
    with torch.no_grad():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--weights", nargs="+", required=True, metavar="[LABEL=]FOLDER", help="UGTSR folders or bundled names"
    )
    ap.add_argument("--pairs", nargs="*", default=[], type=Path, help="folders with hr/ and lr/ subfolders")
    ap.add_argument("--hr", nargs="*", default=[], type=Path, help="HR folders to degrade on the fly")
    ap.add_argument("--degradation", default="bsrgan", help="for --hr: bsrgan | realesrgan | bsrgan_plus")
    ap.add_argument("--crop", type=int, default=256, help="for --hr: HR centre crop side (default 256)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-images", type=int, default=None)
    ap.add_argument("--max-lr", type=int, default=None, help="centre-crop each LR to at most this many pixels per side")
    ap.add_argument("--ks", default=",".join(str(k) for k in DEFAULT_KS), help="k values (default 1,3,5)")
    ap.add_argument("--top-k", type=int, default=None, help="run the models with this k (1 or the trained k)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown table here (else stdout only)")
    args = ap.parse_args(argv)
    if not args.pairs and not args.hr:
        ap.error("give --pairs and/or --hr")
    ks = tuple(int(k) for k in args.ks.split(","))

    rows: list[tuple[str, MatchingAccuracy]] = []
    t0 = time.time()
    for label, weights in parse_weights(args.weights):
        model = UGTSR.from_pretrained(weights, device=args.device)
        sets: list[tuple[str, Iterator[tuple[str, torch.Tensor, torch.Tensor]]]] = []
        sets += [(p.name, paired_folder(p, model.scale, args.max_images)) for p in args.pairs]
        sets += [
            (
                f"{p.name} ({args.degradation})",
                synthetic_pairs(p, model.scale, args.degradation, args.crop, args.seed, args.max_images),
            )
            for p in args.hr
        ]
        for set_name, pairs in sets:
            acc = MatchingAccuracy(ks)
            for _, lr, hr in pairs:
                add_pair(acc, model, lr[None], hr[None], args.top_k, args.max_lr)
            k = model.resolve_top_k(args.top_k)
            rows.append((f"{label} (k={k}, x{model.scale}) on {set_name}", acc))
            print(f"{rows[-1][0]}: " + ", ".join(f"{n} {100 * v:.2f}%" for n, v in acc.row().items()), file=sys.stderr)

    table = markdown_table(rows, ks)
    note = (
        "\nShares of LR tokens. top-k: the HR image's code (the tokenizer's nearest code of its HR "
        "features) is among the k codes nearest to the LQ feature; final code: the code the model "
        f"decodes (after its Top-k fusion) is the HR code. {time.time() - t0:.0f} s on {args.device}.\n"
    )
    print(table + note)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("# UGTSR matching accuracy\n\n" + table + note, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
