"""The arithmetic a method runs in: float32, or bfloat16 / float16 autocast.

``precision`` is one of:

- ``"fp32"``: float32 throughout; the same output on every machine, up to float rounding.
- ``"bf16"``: the method runs under ``torch.autocast`` to bfloat16: its convolutions and
  matrix products compute in bfloat16 (with float32 sums), and what follows them stays
  bfloat16 until it meets a float32 tensor. The weights stay float32, and the parts where
  rounding would pick other results stay float32: the quantizers' nearest-code search, the
  colour fix (`tokensr.inference.colorfix`) and the blending of tiles. On a CPU with native
  bfloat16 instructions (AVX512-BF16 or AMX) these products take a quarter of the time, so a
  learned method takes about half to two thirds of its float32 time in all (docs/usage.md,
  "Precision"); on a CPU without them bfloat16 is emulated and slower than float32.
- ``"fp16"``: float16 autocast, CUDA only.
- ``"auto"`` (:data:`DEFAULT_PRECISION`, what the CLI, the Python API and the web app use):
  ``bf16`` on a CPU that has native bfloat16, else ``fp32``. On CUDA ``auto`` is ``fp32``;
  ask for ``fp16`` or ``bf16`` there by name.

bfloat16 keeps 8 bits of mantissa, so a token whose two best codes are nearly tied can flip
and outputs differ slightly from float32 (about 40-45 dB PSNR between the two for RealSRT).
Whether that costs quality was measured on the validation split (docs/usage.md); a run that
must give the same bytes on every machine asks for ``fp32``.
"""

from __future__ import annotations

import contextlib

import torch

from tokensr.errors import OptionError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEFAULT_PRECISION = "auto"
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` computes bfloat16 natively: a CPU with AVX512-BF16 or AMX, or a CUDA
    GPU that supports it. Elsewhere bfloat16 is emulated (correct, but slower than float32)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if dev.type != "cpu":
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """``precision`` made concrete for ``device``: ``fp32``, ``bf16`` or ``fp16`` (never ``auto``).

    OptionError for an unknown name, or ``fp16`` away from CUDA (CPU autocast to float16 is
    slower than float32 and loses range)."""
    if precision not in PRECISIONS:
        raise OptionError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    dev = torch.device(device)
    if precision == "auto":
        return "bf16" if dev.type == "cpu" and native_bf16(dev) else "fp32"
    if precision == "fp16" and dev.type != "cuda":
        raise OptionError(f"half precision (fp16) needs a CUDA device, not {dev}; on CPU use fp32 or bf16")
    return precision


def autocast(precision: str, device: str | torch.device = "cpu") -> contextlib.AbstractContextManager[object]:
    """A context in which a method runs at ``precision`` (``auto`` is resolved for ``device``)."""
    dev = torch.device(device)
    chosen = resolve_precision(precision, dev)
    if chosen == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(dev.type, dtype=_DTYPES[chosen])
