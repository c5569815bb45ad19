"""Tiny random networks and a fitting loop shared by the method tests (importable because
pytest puts tests/ on sys.path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from tokensr.nn.vqgan import VQGAN, VQGANConfig


def tiny_tokenizer(seed: int = 0, ch_mult: tuple[int, ...] = (1, 2, 4), warm: bool = True) -> VQGAN:
    """A VQGAN with 8 base channels and K=16 codes of dim 8 (f = 2 ** (len(ch_mult) - 1)), in
    eval mode. ``warm``: one forward in train mode first, so the EMA codebook holds real
    encoder outputs instead of its near-zero initialisation."""
    torch.manual_seed(seed)
    tok = VQGAN(VQGANConfig(ch=8, ch_mult=ch_mult, num_res_blocks=1, mid_attention=False, code_dim=8, codebook_size=16))
    if warm:
        tok.train()
        with torch.no_grad():
            tok(torch.rand(2, 3, 32, 32) * 2 - 1)
    return tok.eval()


def fit(task: Any, batch: dict[str, torch.Tensor], steps: int, lr: float = 3e-3, seed: int = 5) -> tuple[float, float]:
    """A training task's generator loss on a fixed batch before and after ``steps`` Adam steps.
    The torch seed is reset before every loss, so random masks are the same each time."""
    opt = torch.optim.Adam(list(task.param_groups()["g"]), lr=lr)

    def loss() -> torch.Tensor:
        torch.manual_seed(seed)
        return task.losses(batch, step=0)[0]["g"]

    first = loss().item()
    for _ in range(steps):
        opt.zero_grad()
        loss().backward()
        opt.step()
    return first, loss().item()


def tiny_photos(folder: Path, count: int = 3, size: int = 48) -> Path:
    """``count`` smooth random ``size``-px PNG photos in ``folder`` (created) for engine runs."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC).save(folder / f"p{i}.png")
    return folder
