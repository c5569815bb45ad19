"""`tokensr convert` for the authors' released RealSRT checkpoint (USTC-JialunPeng/RealSRT).

The real file cannot be downloaded here, so the proof is in three parts:

- ``tests/fixtures/convert/realsrt/small_*``: the authors' own code (commit 494bfc2, sizes made
  small, run on CPU) with random weights: its state dict in their key layout and its outputs for
  fixed inputs (LR tokens, generator and critic logits, the CCM-steered decode, and the whole
  4-step ``forward_with_ccm``). The converted model must reproduce them in fp32.
- ``manifest_full.json``: every key and shape of the released model (their ``RealSRT(use_critic=
  True, use_ccm=True)`` at its released sizes). Every key must land on a ``paper``-preset tensor
  of the same shape, with nothing left over on either side.
- a full-size random checkpoint in their layout goes through the CLI's converter and the
  converted folder upscales a tiny image.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tokensr.convert import convert_files, detect
from tokensr.convert.base import ConversionError, StateDict
from tokensr.convert.realsrt import FAMILIES, convert, convert_state, model_config
from tokensr.methods.realsrt.method import build
from tokensr.methods.realsrt.model import PRESETS, RealSRT
from tokensr.nn.transformer import sincos_2d
from tokensr.nn.vqgan import PRESETS as VQGAN_PRESETS

FIXTURES = Path(__file__).parent / "fixtures" / "convert" / "realsrt"
TOLERANCE = 1e-4


def _small() -> StateDict:
    return load_file(str(FIXTURES / "small_authors.safetensors"))


def _io() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "small_io.safetensors"))


def _manifest() -> dict[str, list[int]]:
    shapes: dict[str, list[int]] = json.loads((FIXTURES / "manifest_full.json").read_text())["shapes"]
    return shapes


def _full_size(device: str, seed: int = 0) -> StateDict:
    """A state dict of the released model's keys and shapes: random (or ``meta``) tensors, with
    the sin-cos tables their code stores."""
    g = torch.Generator().manual_seed(seed)
    state: StateDict = {}
    for key, shape in _manifest().items():
        if key.endswith("pos_emb"):
            state[key] = sincos_2d(shape[2], 32, 32, cols_first=True)[None]
        elif device == "meta":
            state[key] = torch.empty(shape, device="meta")
        else:
            state[key] = torch.randn(shape, generator=g) * 0.02
    return state


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# --- (a) the authors' outputs, reproduced ------------------------------------------------------
def test_small_checkpoint_reproduces_the_authors_outputs() -> None:
    io = _io()
    model = convert([_small()])
    hw = (8, 8)
    with torch.no_grad():
        cond = model.condition(io["lr"])
        assert torch.equal(cond.lr, io["lr_ids"])  # their VQGAN picks the same LR tokens
        logits = model.generator(io["x"], io["lr_ids"], hw)
        assert _max_diff(logits, io["gen_logits"]) < TOLERANCE
        critic = model.critic(io["full_ids"], io["lr_ids"], hw)  # type: ignore[misc]
        assert _max_diff(critic, io["critic_logits"]) < TOLERANCE
        image = model.decode(io["full_ids"], hw, cond.lr_up, clamp=False)
        assert _max_diff(image, io["ccm_image"]) < TOLERANCE
        # their forward_with_ccm: T = 4, argmax, critic re-masking with int() (floor) counts
        result = model.generate(cond, steps=4, rounding="floor", score_last=False)
        assert torch.equal(result.tokens, io["sr_ids"])
        sr = model.decode(result.tokens, hw, cond.lr_up, clamp=False)
        assert _max_diff(sr, io["sr"]) < TOLERANCE


def test_a_released_style_file_converts_through_the_cli_function(tmp_path: Path) -> None:
    """Their file is a BasicSR checkpoint (``params_ema``); the saved folder runs the same."""
    torch.save({"params_ema": _small(), "params": {}}, tmp_path / "net_g.pth")
    fam, folder = convert_files([str(tmp_path / "net_g.pth")], tmp_path / "out")
    assert fam.name == "realsrt" and fam.licence == "MIT"
    assert "MIT" in (folder / "README.md").read_text()
    loaded = RealSRT.from_pretrained(folder)
    io = _io()
    with torch.no_grad():
        cond = loaded.condition(io["lr"])
        result = loaded.generate(cond, steps=4, rounding="floor", score_last=False)
        sr = loaded.decode(result.tokens, (8, 8), cond.lr_up, clamp=False)
    assert torch.equal(result.tokens, io["sr_ids"]) and _max_diff(sr, io["sr"]) < TOLERANCE
    # it runs with the authors' inference settings unless told otherwise
    method = build(weights=str(folder))
    assert (method.aggregate, method.color, method.rounding, method.stride) == ("pixels", "adain", "floor", 4)
    assert build(weights=str(folder), aggregate="tokens").aggregate == "tokens"


def test_a_split_release_merges_in_order() -> None:
    """A bare VQGAN file (their ``VQGAN`` state dict) plus the rest converts like one file."""
    state = _small()
    vae = {k[len("vae.") :]: v for k, v in state.items() if k.startswith("vae.")}
    rest = {k: v for k, v in state.items() if not k.startswith("vae.")}
    assert FAMILIES[0].matches(vae) and FAMILIES[0].matches(rest)
    a, b = convert([vae, rest]).state_dict(), convert([state]).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_model_without_critic_or_ccm_converts_without_them() -> None:
    state = {k: v for k, v in _small().items() if k.startswith(("vae.", "generator."))}
    model = convert([state])
    assert model.critic is None and model.ccm is None


# --- (b) the released model's keys, one to one on the paper preset -----------------------------
def test_every_released_key_maps_onto_the_paper_preset() -> None:
    state = _full_size("meta")
    config = model_config(state)
    # the sizes read from the shapes are the paper presets
    assert config.tokenizer == dataclasses.asdict(VQGAN_PRESETS["paper"])
    paper = PRESETS["paper"]
    for name, preset in (("generator", paper.generator), ("critic", paper.critic)):
        settings = getattr(config, name)
        assert settings == preset, name
    assert (config.lr_patch, config.scale, config.clamp_lr_up) == (paper.lr_patch, 4, paper.clamp_lr_up)
    with torch.device("meta"):
        model = RealSRT(config)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in convert_state(state, config).items()}
    assert sorted(set(got) - set(own)) == []  # every key of theirs has a home
    assert sorted(set(own) - set(got)) == []  # every tokensr tensor is filled
    assert [k for k in own if own[k] != got[k]] == []
    # what changes form: 2 sin-cos tables recomputed, q/k/v weights and biases stacked, 1 flag set
    assert len(state) == 1068 and len(own) == 1068 - 2 - (6 - 2) + 1


# --- (c) a full-size checkpoint, end to end ----------------------------------------------------
@pytest.mark.slow
def test_full_size_random_checkpoint_converts_and_upscales(tmp_path: Path) -> None:
    """About a minute of CPU: 740 MB written twice and one 64x64 LR patch through the 185 M
    parameter model (one generation step keeps it short; the CCM is on)."""
    import numpy as np

    from tokensr import api

    start = time.perf_counter()
    torch.save({"params_ema": _full_size("cpu")}, tmp_path / "net_g_80000.pth")
    fam, folder = convert_files([str(tmp_path / "net_g_80000.pth")], tmp_path / "realsrt-official")
    assert fam.name == "realsrt"
    lr = (np.random.default_rng(0).random((8, 8, 3)) * 255).astype(np.uint8)
    sr = api.upscale(lr, str(folder), steps=1)
    assert sr.shape == (32, 32, 3) and sr.dtype == np.uint8
    print(f"full-size convert + upscale: {time.perf_counter() - start:.1f} s")


# --- (d) files that are not theirs ---------------------------------------------------------------
def test_an_unreadable_file_gives_a_clear_error(tmp_path: Path) -> None:
    torch.save({"params_ema": _small()}, tmp_path / "whole.pth")
    data = (tmp_path / "whole.pth").read_bytes()
    (tmp_path / "net_g_80000.pth").write_bytes(data[: len(data) // 2])  # an interrupted download
    with pytest.raises(ConversionError, match="net_g_80000.pth is not a PyTorch checkpoint"):
        convert_files([str(tmp_path / "net_g_80000.pth")], tmp_path / "out")
    assert not (tmp_path / "out" / "config.json").exists()


def test_an_unrelated_checkpoint_is_not_recognised() -> None:
    state = {"conv_first.weight": torch.zeros(64, 3, 3, 3), "conv_last.weight": torch.zeros(3, 64, 3, 3)}
    assert not FAMILIES[0].matches(state)
    with pytest.raises(ConversionError, match="is not a checkpoint tokensr knows"):
        detect([state], ["rrdb.pth"])


def test_missing_and_unknown_keys_are_named_in_one_line() -> None:
    state = _small()
    del state["critic.dec_blocks.0.0.to_q.weight"]
    state["critic.extra_head.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError) as err:
        convert([state])
    msg = str(err.value)
    assert "\n" not in msg
    assert "missing keys (critic.hr_blocks.0.attn.to_q.weight)" in msg
    assert "unexpected keys (critic.extra_head.weight)" in msg


def test_other_layout_problems_are_explained() -> None:
    state = _small()
    with pytest.raises(ConversionError, match="no RealSRT generator"):
        convert([{k[4:]: v for k, v in state.items() if k.startswith("vae.")}])
    bad = dict(state)
    bad["generator.pos_emb"] = bad["generator.pos_emb"] + 0.01
    with pytest.raises(ConversionError, match="not the sin-cos table"):
        convert([bad])
    cut = {k: v for k, v in state.items() if not k.startswith("vae.encoder.model.3.")}
    with pytest.raises(ConversionError, match="encoder"):
        convert([cut])
