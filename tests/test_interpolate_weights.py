"""benchmarks/interpolate_weights.py: ESRGAN-style interpolation of saved method folders, and the
extrapolation that recovers an end point from a saved mixture."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bench_scripts import load_script
from safetensors.torch import load_file, save_file

interp = load_script("interpolate_weights")


def _folder(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    path.mkdir(parents=True)
    save_file(tensors, str(path / "model.safetensors"))
    (path / "config.json").write_text("{}")
    return path


def test_mix_only_the_prefixed_tensors_and_recover_an_end_point(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    shared = torch.randn(4, 4, generator=g)
    v1, gan = torch.randn(3, 3, generator=g), torch.randn(3, 3, generator=g)
    ids = torch.arange(5)
    a = _folder(tmp_path / "a", {"ccm.w": v1, "tokenizer.w": shared, "ids": ids})
    mixed = 0.3 * v1 + 0.7 * gan  # what was shipped
    b = _folder(tmp_path / "b", {"ccm.w": mixed, "tokenizer.w": shared.clone(), "ids": ids})

    n = interp.interpolate(a, b, tmp_path / "half", 0.5, ("ccm.",))
    half = load_file(str(tmp_path / "half" / "model.safetensors"))
    assert n == 1
    assert torch.allclose(half["ccm.w"], 0.5 * v1 + 0.5 * mixed, atol=1e-6)
    assert torch.equal(half["tokenizer.w"], shared) and torch.equal(half["ids"], ids)
    assert (tmp_path / "half" / "config.json").is_file()

    interp.main([str(a), str(b), str(tmp_path / "gan"), str(1 / 0.7), "--prefix", "ccm."])
    assert torch.allclose(load_file(str(tmp_path / "gan" / "model.safetensors"))["ccm.w"], gan, atol=1e-5)


def test_tensors_outside_the_prefix_must_agree(tmp_path: Path) -> None:
    a = _folder(tmp_path / "a", {"ccm.w": torch.zeros(2), "tokenizer.w": torch.zeros(2)})
    b = _folder(tmp_path / "b", {"ccm.w": torch.ones(2), "tokenizer.w": torch.ones(2)})
    with pytest.raises(SystemExit, match="tokenizer.w differs"):
        interp.interpolate(a, b, tmp_path / "out", 0.5, ("ccm.",))
    assert not (tmp_path / "out" / "model.safetensors").exists()
    c = _folder(tmp_path / "c", {"ccm.w": torch.ones(2)})
    with pytest.raises(SystemExit, match="different tensors"):
        interp.interpolate(a, c, tmp_path / "out", 0.5)
