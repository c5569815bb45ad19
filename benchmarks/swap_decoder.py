"""Put a fine-tuned tokenizer decoder into a saved method folder.

A decoder fine-tuned with ``trainable: decoder`` (configs/vqgan_small_gan.yaml) keeps the
encoder and codebook of the tokenizer it started from, so every method built on that tokenizer
still predicts valid tokens and can decode them with the new decoder. This copies the
decoder and ``post_quant_conv`` weights of ``VQGAN`` into ``METHOD/model.safetensors`` under
the method's ``tokenizer.`` prefix and writes the result to ``OUT`` (config and model card
copied). It refuses when the encoder or codebook differ, since the method's tokens would
then mean something else.

    PYTHONPATH=. python benchmarks/swap_decoder.py tokensr/weights/realsrt-small-x4 runs/vq/export OUT [--fp16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from tokensr.pretrained import save_weights_like

PREFIX = "tokenizer."
SWAPPED = ("decoder.", "post_quant_conv.")


def swap_decoder(method: Path, vqgan: Path, out: Path, fp16: bool = True) -> int:
    """Write ``out`` = ``method`` with ``vqgan``'s decoder; returns the number of tensors replaced."""
    state = load_file(str(method / "model.safetensors"))
    new = load_file(str(vqgan / "model.safetensors"))
    for key, value in new.items():
        mine = state.get(PREFIX + key)
        if mine is None:
            raise SystemExit(f"swap_decoder: error: {method} has no tensor {PREFIX + key}: not the same tokenizer")
        if mine.shape != value.shape:
            raise SystemExit(
                f"swap_decoder: error: {PREFIX + key} is {tuple(mine.shape)} in {method}, "
                f"{tuple(value.shape)} in {vqgan}"
            )
        if not key.startswith(SWAPPED) and not torch.allclose(mine.float(), value.float(), atol=1e-3, rtol=1e-2):
            raise SystemExit(
                f"swap_decoder: error: {key} differs between {method} and {vqgan}: "
                "only the decoder may change, or the method's tokens change meaning"
            )
    replaced = 0
    for key, value in new.items():
        if key.startswith(SWAPPED):
            if value.is_floating_point():
                value = value.half() if fp16 else value.float()
            state[PREFIX + key] = value
            replaced += 1
    save_weights_like(state, method, out)
    return replaced


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("method", type=Path, help="saved method folder (config.json + model.safetensors)")
    p.add_argument("vqgan", type=Path, help="saved VQGAN folder with the new decoder")
    p.add_argument("out", type=Path, help="output folder (may be METHOD itself)")
    p.add_argument("--fp32", action="store_true", help="store the new decoder in fp32 (default fp16)")
    args = p.parse_args(argv)
    n = swap_decoder(args.method, args.vqgan, args.out, fp16=not args.fp32)
    print(f"replaced {n} decoder tensors; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
