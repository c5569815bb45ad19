"""Reconstruction quality of a VQGAN tokenizer: encode -> quantize -> decode on a folder of images.

Reports per-image and mean PSNR (RGB and Y), SSIM-Y and NIQE of the reconstruction (next to the
NIQE of the originals), the share of the codebook the whole set uses, and the difference between
fp32 and fp16 weights (to decide how to ship them).

    python benchmarks/tokenizer_eval.py WEIGHTS [--data ../shared/data/eval/set14] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from tokensr.metrics import psnr, quantize, read_rgb, ssim
from tokensr.metrics.image import list_images
from tokensr.metrics.niqe import niqe
from tokensr.nn.vqgan import VQGAN


@torch.no_grad()
def evaluate(model: VQGAN, files: list[Path]) -> tuple[list[tuple[str, float, float, float, float, float]], float]:
    rows, used = [], torch.zeros(model.config.codebook_size, dtype=torch.bool)
    for f in files:
        hr = torch.from_numpy(read_rgb(f)).permute(2, 0, 1)[None].float() / 255
        rec = quantize(model.reconstruct(hr)[0])
        gt = quantize(hr[0])
        f_ = model.factor
        h, w = hr.shape[-2:]
        pad = torch.nn.functional.pad(hr * 2 - 1, (0, (-w) % f_, 0, (-h) % f_), mode="replicate")
        used[model.encode(pad).indices.flatten()] = True
        rows.append(
            (f.stem, psnr(rec, gt, 0, y_channel=False), psnr(rec, gt, 0), ssim(rec, gt, 0), niqe(rec), niqe(gt))
        )
    return rows, float(used.float().mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("weights")
    p.add_argument("--data", default="../shared/data/eval/set14")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    files = list_images(args.data)
    if not files:
        print(f"no images in {args.data}", file=sys.stderr)
        return 1
    model = VQGAN.from_pretrained(args.weights)
    rows, usage = evaluate(model, files)
    half = VQGAN.from_pretrained(args.weights)
    half.load_state_dict({k: (v.half().float() if v.is_floating_point() else v) for k, v in model.state_dict().items()})
    rows16, usage16 = evaluate(half, files)
    lines = [
        f"Tokenizer `{args.weights}` on `{args.data}` ({len(files)} images)",
        "",
        "| image | PSNR-RGB | PSNR-Y | SSIM-Y | NIQE | NIQE of the original |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {n} | {a:.2f} | {b:.2f} | {c:.4f} | {d:.2f} | {e:.2f} |" for n, a, b, c, d, e in rows]
    m = np.mean([r[1:] for r in rows], axis=0)
    m16 = np.mean([r[1:] for r in rows16], axis=0)
    lines += [
        f"| **mean** | **{m[0]:.2f}** | **{m[1]:.2f}** | **{m[2]:.4f}** | **{m[3]:.2f}** | {m[4]:.2f} |",
        "",
        f"Codebook usage over the set: {usage:.1%} of {model.config.codebook_size} codes.",
        f"fp16 weights: mean PSNR-RGB {m16[0]:.2f} (fp32 {m[0]:.2f}), usage {usage16:.1%}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
