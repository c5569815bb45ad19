"""ESRGAN-style network interpolation between two saved method folders.

Writes ``OUT`` = ``A + alpha * (B - A)`` for every floating-point tensor whose name starts with
one of ``--prefix`` (default: every tensor), and ``A``'s tensor elsewhere. Tensors outside the
prefixes must agree between ``A`` and ``B`` (so, say, a CCM interpolation cannot silently mix two
tokenizers). ``alpha`` 0 gives ``A``, 1 gives ``B``; values above 1 extrapolate, which recovers
an end point from a saved mixture: if ``B = (1 - m) A + m G``, then ``alpha = 1 / m`` gives ``G``.

    # the bundled RealSRT v3 CCM is 0.3 v1 + 0.7 GAN; recover the GAN CCM (alpha = 1 / 0.7)
    git show 22574eb:tokensr/weights/realsrt-small-x4/model.safetensors > runs/v1/model.safetensors
    PYTHONPATH=. python benchmarks/interpolate_weights.py runs/v1 tokensr/weights/realsrt-small-x4 \\
        runs/ccm_gan 1.428571 --prefix ccm.

``A``'s config.json and README.md are copied; tensors are written in ``A``'s dtype unless
``--fp32``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file

from tokensr.pretrained import save_weights_like


def interpolate(
    a: Path, b: Path, out: Path, alpha: float, prefixes: tuple[str, ...] = ("",), fp32: bool = False
) -> int:
    """Write the interpolated folder; returns the number of tensors that were mixed."""
    sa = load_file(str(a / "model.safetensors"))
    sb = load_file(str(b / "model.safetensors"))
    if sa.keys() != sb.keys():
        missing = sorted(set(sa) ^ set(sb))[:3]
        raise SystemExit(f"interpolate_weights: error: {a} and {b} hold different tensors (e.g. {missing})")
    mixed, result = 0, {}
    for key, ta in sa.items():
        tb = sb[key]
        if ta.shape != tb.shape:
            raise SystemExit(f"interpolate_weights: error: {key} is {tuple(ta.shape)} in {a}, {tuple(tb.shape)} in {b}")
        dtype = torch.float32 if fp32 and ta.is_floating_point() else ta.dtype
        if ta.is_floating_point() and key.startswith(prefixes):
            value = ta.float() + alpha * (tb.float() - ta.float())
            mixed += 1
        else:
            if not torch.allclose(ta.float(), tb.float(), atol=1e-3, rtol=1e-2):
                raise SystemExit(f"interpolate_weights: error: {key} differs between {a} and {b}, outside {prefixes}")
            value = ta
        result[key] = value.to(dtype).contiguous()
    save_weights_like(result, a, out)
    return mixed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a", type=Path, help="method folder at alpha 0")
    p.add_argument("b", type=Path, help="method folder at alpha 1")
    p.add_argument("out", type=Path)
    p.add_argument("alpha", type=float)
    p.add_argument("--prefix", action="append", default=None, help="mix only tensors named so (repeatable)")
    p.add_argument("--fp32", action="store_true", help="write float32 tensors")
    args = p.parse_args(argv)
    prefixes = tuple(args.prefix) if args.prefix else ("",)
    n = interpolate(args.a, args.b, args.out, args.alpha, prefixes, args.fp32)
    print(f"{args.out}: {n} tensors mixed at alpha {args.alpha:g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
