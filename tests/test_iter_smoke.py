"""End-to-end smoke test of ITER on tiny random networks (save -> build -> upscale) and the
start-step rule's monotonicity in alpha."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tokensr.methods.iter.model import ITER
from tokensr.methods.iter.sampling import start_step
from tokensr.nn.vqgan import VQGAN, VQGANConfig


def tiny_tokenizer() -> VQGAN:
    torch.manual_seed(0)
    cfg = VQGANConfig(ch=8, ch_mult=(1, 2, 4), num_res_blocks=1, mid_attention=False, code_dim=8, codebook_size=16)
    return VQGAN(cfg).eval()


@pytest.mark.parametrize("scale", [4, 2])
def test_tiny_iter_end_to_end(tmp_path: Path, scale: int) -> None:
    from tokensr.methods.iter.method import build

    model = ITER.from_preset("tiny", tiny_tokenizer(), scale=scale)
    model.save_pretrained(tmp_path / "iter")
    method = build(scale=scale, weights=str(tmp_path / "iter"), device="cpu")
    lr = torch.rand(1, 3, 20, 27)
    out = method(lr)
    assert out.shape == (1, 3, 20 * scale, 27 * scale)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, method(lr))  # deterministic by default


def test_start_step_is_monotone_in_alpha() -> None:
    torch.manual_seed(0)
    good = torch.rand(1, 16, 16)
    steps = [int(start_step(good, alpha, 8)) for alpha in (0.1, 0.3, 0.5, 0.7, 0.9)]
    assert steps == sorted(steps)  # a stricter threshold keeps fewer tokens -> more steps to run
    assert all(0 <= s <= 8 for s in steps)
