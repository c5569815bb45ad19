"""RealSRT steps / confidence / CCM table (the paper's Fig. 4 and Table 3 at our scale).

One RealSRT weights folder (with a critic and a CCM) is run through ``tokensr bench`` once per
variant: generation steps ``T`` (``--steps``, default 1..8) x the confidence that picks the
tokens to re-mask (``critic``: the paper's critic, ``generator``: MaskGIT's own probability) x
decoding with or without the conditional controlling module (CCM, ``--ccm``) x colour fix
(``--color-fixes``, default: the method's own). The variants without the CCM run only at the
``--no-ccm-steps`` (default: all of ``--steps``). Everything else is the method's default
(aggregation, argmax sampling), so every number comes from the same deterministic pipeline a
user gets. The paper's study (sec. 4.3) decodes without the CCM and corrects colour with AdaIN:
``--ccm off --color-fixes adain``.

The Markdown table has one row per (T, confidence, CCM) with PSNR-Y / SSIM-Y / NIQE per paired
set, NIQE per LR-only set, and seconds per output megapixel; the raw per-image rows stay in
``--work``/results.csv.

Run::

    PYTHONPATH=. python benchmarks/realsrt_steps.py --weights tokensr/weights/realsrt-small-x4 \\
        --data ../shared/data/eval/set14_realesrgan_x4 ../shared/data/eval/realset65 --lr-crop 128 \\
        --out docs/realsrt_steps.md
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import torch


def parse_ints(text: str) -> list[int]:
    try:
        values = sorted({int(p) for p in text.split(",") if p.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}': expected a comma-separated list of integers") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"'{text}': give integers >= 1")
    return values


def variants(
    weights: str,
    steps: list[int],
    confidences: list[str],
    no_ccm_steps: list[int],
    color_fixes: list[str | None] | None = None,
    ccm_modes: tuple[bool, ...] = (True, False),
) -> list[dict[str, Any]]:
    """The grid as dicts ``{T, confidence, ccm, fix, spec}`` in table order. ``fix`` None is
    the method's default colour fix (the spec leaves it out)."""
    out = []
    for ccm in ccm_modes:
        for fix in color_fixes or [None]:
            for conf in confidences:
                for t in steps if ccm else no_ccm_steps:
                    spec = f"realsrt:weights={weights}:steps={t}:confidence={conf}:ccm={str(ccm).lower()}"
                    if fix is not None:
                        spec += f":color_fix={fix}"
                    out.append({"T": t, "confidence": conf, "ccm": ccm, "fix": fix, "spec": spec})
    return out


def _fmt(v: Any, digits: int) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def table(grid: list[dict[str, Any]], summary: list[dict[str, Any]], paired: dict[str, bool]) -> str:
    by = {(r["dataset"], r["method"]): r for r in summary}
    head = ["T", "confidence", "CCM", "colour fix"]
    for name, is_paired in paired.items():
        head += [f"{name} PSNR-Y", f"{name} SSIM-Y", f"{name} NIQE"] if is_paired else [f"{name} NIQE"]
    head.append("s/MP")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in grid:
        cells = [str(g["T"]), g["confidence"], "✓" if g["ccm"] else "×", g.get("fix") or "default"]
        secs = []
        for name, is_paired in paired.items():
            r = by.get((name, g["spec"]), {})
            if is_paired:
                cells += [_fmt(r.get("psnr"), 2), _fmt(r.get("ssim"), 4), _fmt(r.get("niqe"), 3)]
            else:
                cells.append(_fmt(r.get("niqe"), 3))
            if r.get("s_per_mp") is not None:
                secs.append(float(r["s_per_mp"]))
        cells.append(_fmt(sum(secs) / len(secs) if secs else None, 1))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--weights", required=True, help="RealSRT weights folder (or bundled name) with critic and CCM")
    ap.add_argument("--data", nargs="+", required=True, type=Path, help="bench data folders (paired or LR-only)")
    ap.add_argument("--steps", type=parse_ints, default=list(range(1, 9)), help="T values (default 1..8)")
    ap.add_argument("--confidences", default="critic,generator", help="critic, generator or both (default)")
    ap.add_argument("--no-ccm-steps", type=parse_ints, default=None, help="T values without the CCM (default: --steps)")
    ap.add_argument(
        "--color-fixes",
        default=None,
        help="colour fixes to run each variant with, e.g. adain,none (default: the method's default only)",
    )
    ap.add_argument(
        "--ccm", choices=("both", "on", "off"), default="both", help="variants with the CCM, without, or both"
    )
    ap.add_argument("--lr-crop", type=int, default=None, help="centre-crop LR-only images to N x N LR px")
    ap.add_argument("--max-images", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", type=Path, default=Path("runs/realsrt_steps"), help="bench output folder")
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    args = ap.parse_args(argv)

    from tokensr.api import method_for_weights
    from tokensr.bench.datasets import load_dataset
    from tokensr.bench.runner import BenchConfig, run_bench
    from tokensr.bench.spec import parse_method
    from tokensr.errors import TokensrError

    confidences = [c.strip() for c in args.confidences.split(",") if c.strip()]
    if not confidences or any(c not in ("critic", "generator") for c in confidences):
        ap.error("--confidences takes critic and/or generator")
    try:
        kind, folder, config = method_for_weights(args.weights)
        if kind != "realsrt":
            raise TokensrError(f"{args.weights} holds a {kind} model, not a realsrt model")
        fixes: list[str | None] | None = None
        if args.color_fixes:
            fixes = [f.strip() for f in args.color_fixes.split(",") if f.strip()]
        modes = {"both": (True, False), "on": (True,), "off": (False,)}[args.ccm]
        grid = variants(str(args.weights), args.steps, confidences, args.no_ccm_steps or args.steps, fixes, modes)
        scale = int(config.get("scale", 4))
        cfg = BenchConfig(
            methods=[parse_method(g["spec"]) for g in grid],
            data=list(args.data),
            out=args.work,
            scale=scale,
            device=args.device,
            max_images=args.max_images,
            lr_crop=args.lr_crop,
            figures=0,
            progress=False,
        )
        with torch.no_grad():
            result = run_bench(cfg)
        # keyed as the bench names its rows (the resolved folder name)
        paired = {ds.name: ds.paired for ds in (load_dataset(d, args.max_images) for d in args.data)}
    except TokensrError as e:
        print(f"realsrt_steps: error: {e}", file=sys.stderr)
        return 2
    text = table(grid, result.summary, paired)
    crop = f"; LR-only sets centre-cropped to {args.lr_crop}x{args.lr_crop} LR px" if args.lr_crop else ""
    note = (
        f"\nModel: {args.weights} (x{scale}). Data: {', '.join(p.name for p in args.data)}{crop}. "
        "PSNR-Y / SSIM-Y on the MATLAB Y channel with a border of the scale, NIQE of the outputs; means "
        "over images; s/MP = seconds per output megapixel on this machine. Each row is one "
        "`tokensr bench` method spec (`realsrt:steps=T:confidence=C:ccm=B`), per-image rows in "
        f"{args.work}/results.csv.\n"
    )
    print(text + note)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("# RealSRT: steps, confidence and CCM\n\n" + text + note, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
