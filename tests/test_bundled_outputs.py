"""Pinned outputs of every bundled model: refactors must not change what the shipped weights do.

Each bundled model in ``tokensr/weights/`` runs one small fixed input through the code path its
method uses (the VQGAN reconstructs; RealSRT conditions, generates 4 steps with its critic and
decodes through its CCM; ITER restores deterministically; UGTSR upscales). A few output pixels,
the output's sum and the predicted tokens are compared with ``tests/data/bundled_outputs.json``,
written from the code as it was when the pins were taken.

When the bundled weights themselves change, the pins are stale, not the code wrong: regenerate
them with ``python tests/test_bundled_outputs.py`` (and commit the JSON with the new weights).

Pixels are compared to 1e-5, not bit for bit, so the test passes on CPUs whose float kernels
differ in the last bits; ``TOKENSR_PINS_EXACT=1`` also checks the sha256 of the whole output
tensor (bit-identical on the machine that wrote the pins).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

PINS = Path(__file__).parent / "data" / "bundled_outputs.json"
REGENERATE = "python tests/test_bundled_outputs.py"
PIXELS = 8  # pixels pinned per model, spread evenly over the flattened output
TOLERANCE = 1e-5


def _weights_folder(name: str) -> Path:
    from tokensr.pretrained import resolve

    return resolve(name)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _lr(h: int, w: int, seed: int) -> torch.Tensor:
    """A fixed LR batch ``[1, 3, h, w]`` in [0, 1]: smooth waves plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    phase = torch.rand(3, 1, 1, generator=g) * 6.28
    waves = 0.5 + 0.35 * torch.sin(0.45 * x + 0.3 * y + phase)
    return (waves + 0.1 * torch.rand(3, h, w, generator=g)).clamp(0, 1)[None]


# --- one function per bundled model: (output image [1, 3, H, W], tokens) -----------------------------
def _vqgan(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from tokensr.nn.vqgan import VQGAN

    model = VQGAN.from_pretrained(folder).eval()
    img = _lr(32, 24, seed=1)
    return model.reconstruct(img), model.encode(img * 2 - 1).indices


def _realsrt(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from tokensr.methods.realsrt.model import RealSRT

    model = RealSRT.from_pretrained(folder).eval()
    lr = _lr(model.config.lr_patch, model.config.lr_patch, seed=2)
    cond = model.condition(lr)
    result = model.generate(cond, 4, "critic", score_last=False)
    return model.decode(result.tokens, cond.hw, cond.lr_up), result.tokens


def _iter(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from tokensr.methods.iter.model import ITER

    model = ITER.from_pretrained(folder).eval()
    result = model.restore(_lr(16, 12, seed=3), adaptive=True, sample=False)
    return model.decode_tokens(result.tokens), result.tokens


def _ugtsr(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from tokensr.methods.ugtsr.model import UGTSR

    model = UGTSR.from_pretrained(folder).eval()
    lr = _lr(16, 12, seed=4)
    with torch.no_grad():
        out = model(lr)
    return model.upscale(lr), out.indices


RUNS: dict[str, Callable[[Path], tuple[torch.Tensor, torch.Tensor]]] = {
    "vqgan-small": _vqgan,
    "realsrt-small-x4": _realsrt,
    "iter-small-x4": _iter,
    "ugtsr-small-x4": _ugtsr,
    "ugtsr-small-x2": _ugtsr,
}


def measure(name: str) -> dict[str, Any]:
    """The pinned values of one bundled model (one thread: reductions keep their order)."""
    folder = _weights_folder(name)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            image, tokens = RUNS[name](folder)
    finally:
        torch.set_num_threads(threads)
    flat = image.detach().float().contiguous().flatten()
    picks = torch.linspace(0, flat.numel() - 1, PIXELS).round().long()
    return {
        "weights_sha256": _sha256(folder / "model.safetensors"),
        "shape": list(image.shape),
        "pixel_index": picks.tolist(),
        "pixels": [float(v) for v in flat[picks]],
        "sum": float(flat.double().sum()),
        "tokens_sha256": hashlib.sha256(tokens.long().cpu().numpy().tobytes()).hexdigest(),
        "output_sha256": hashlib.sha256(flat.numpy().tobytes()).hexdigest(),
    }


def _pins() -> dict[str, Any]:
    if not PINS.is_file():
        pytest.fail(f"{PINS} is missing: write it with `{REGENERATE}`")
    return json.loads(PINS.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def test_every_bundled_model_is_pinned() -> None:
    from tokensr.pretrained import bundled_names

    assert sorted(_pins()) == sorted(bundled_names()) == sorted(RUNS)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_bundled_model_output_is_unchanged(name: str) -> None:
    pin = _pins()[name]
    weights = _weights_folder(name) / "model.safetensors"
    if _sha256(weights) != pin["weights_sha256"]:
        pytest.fail(f"bundled weights changed ({name}): regenerate the pins with `{REGENERATE}`", pytrace=False)
    got = measure(name)
    assert got["shape"] == pin["shape"]
    assert got["tokens_sha256"] == pin["tokens_sha256"], f"{name}: the predicted tokens changed"
    assert got["pixels"] == pytest.approx(pin["pixels"], abs=TOLERANCE), f"{name}: output pixels changed"
    assert got["sum"] == pytest.approx(pin["sum"], abs=TOLERANCE * len(got["pixels"]) * 1000)
    if os.environ.get("TOKENSR_PINS_EXACT") == "1":
        assert got["output_sha256"] == pin["output_sha256"], f"{name}: output is not bit-identical"


def test_pins_catch_a_changed_output() -> None:
    """The comparison is not vacuous: one nudged weight moves the pinned pixels."""
    from tokensr.nn.vqgan import VQGAN

    model = VQGAN.from_pretrained(_weights_folder("vqgan-small")).eval()
    img = _lr(32, 24, seed=1)
    before = model.reconstruct(img)
    with torch.no_grad():
        model.decoder.conv_out.bias.add_(1e-3)
    assert not torch.allclose(model.reconstruct(img), before, atol=TOLERANCE)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    pins = {name: measure(name) for name in sorted(RUNS)}
    PINS.parent.mkdir(parents=True, exist_ok=True)
    PINS.write_text(json.dumps(pins, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {PINS} ({', '.join(pins)})")
