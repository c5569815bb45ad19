"""RealSRT networks: transformer pieces, generator/critic, CCM, save/load."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_tokenizer as _tiny_tokenizer

from tokensr.methods.realsrt.ccm import CCM
from tokensr.methods.realsrt.model import PRESETS, RealSRT, TokenTransformer, TokenTransformerConfig
from tokensr.nn.transformer import Attention, FeedForward, TransformerBlock, sincos_2d
from tokensr.nn.vqgan import VQGAN


def tiny_tokenizer(seed: int = 0) -> VQGAN:
    return _tiny_tokenizer(seed, (1, 2))


# --- generic transformer pieces ----------------------------------------------------------
def test_sincos_2d_rows_and_columns() -> None:
    pos = sincos_2d(16, 3, 5)
    assert pos.shape == (15, 16)
    grid = pos.view(3, 5, 16)
    # the first half depends only on the row, the second half only on the column
    assert torch.allclose(grid[:, 0, :8], grid[:, 4, :8])
    assert torch.allclose(grid[0, :, 8:], grid[2, :, 8:])
    assert not torch.allclose(grid[0, 0], grid[1, 0]) and not torch.allclose(grid[0, 0], grid[0, 1])
    # position 0 is sin 0 = 0, cos 0 = 1
    assert torch.allclose(pos[0, :4], torch.zeros(4)) and torch.allclose(pos[0, 4:8], torch.ones(4))
    with pytest.raises(ValueError):
        sincos_2d(6, 2, 2)


def test_attention_null_kv_and_context_mask() -> None:
    torch.manual_seed(0)
    attn = Attention(16, heads=2, dim_head=8, cross=True)
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    out = attn(x, ctx)
    assert out.shape == (2, 5, 16) and torch.isfinite(out).all()
    # masked context positions have no influence
    mask = torch.tensor([[True] * 4 + [False] * 3] * 2)
    ctx2 = ctx.clone()
    ctx2[:, 4:] = torch.randn(2, 3, 16) * 100
    assert torch.allclose(attn(x, ctx, mask), attn(x, ctx2, mask), atol=1e-5)
    # a fully masked context leaves only the learned null key/value: still finite
    assert torch.isfinite(attn(x, ctx, torch.zeros(2, 7, dtype=torch.bool))).all()
    with pytest.raises(ValueError):
        attn(x)
    self_attn = Attention(16, heads=2, dim_head=8)
    with pytest.raises(ValueError):
        self_attn(x, ctx)


def test_feedforward_and_block_shapes() -> None:
    ff = FeedForward(12, mult=4)
    assert ff.proj_in.out_features == 2 * int(12 * 4 * 2 / 3)
    block = TransformerBlock(16, heads=2, dim_head=8, cross=True)
    y = block(torch.randn(3, 4, 16), torch.randn(3, 6, 16))
    assert y.shape == (3, 4, 16)
    with pytest.raises(ValueError):
        block(torch.randn(3, 4, 16))


# --- generator / critic --------------------------------------------------------------------
def test_generator_mask_token_and_shapes() -> None:
    torch.manual_seed(0)
    cfg = TokenTransformerConfig(codebook_size=10, code_dim=4, dim=16, heads=2, dim_head=8, lr_depth=1, hr_depth=1)
    gen = TokenTransformer(cfg)
    gen.load_codebook(torch.randn(10, 4))
    lr = torch.randint(0, 10, (2, 12))
    ids = torch.randint(0, 10, (2, 12))
    logits = gen(ids, lr, (3, 4))
    assert logits.shape == (2, 12, 10)
    masked = ids.clone()
    masked[:, 5] = gen.mask_id
    out = gen(masked, lr, (3, 4))
    assert torch.isfinite(out).all() and not torch.allclose(out, logits)
    # the mask token embedding replaces whatever token sat there
    gen.mask_token.data.zero_()  # type: ignore[union-attr]
    sel = torch.zeros(2, 12, dtype=torch.bool)
    sel[:, 5] = True
    picked = gen(masked, lr, (3, 4), select=sel)
    assert picked.shape == (2, 10) and torch.allclose(picked, gen(masked, lr, (3, 4))[:, 5])
    # latents work as the LR stream too
    assert gen(ids, torch.randn(2, 12, 4), (3, 4)).shape == (2, 12, 10)


def test_cached_context_keys_values_give_the_same_logits() -> None:
    """Iterative decoding computes each block's cross-attention keys/values of the LR context
    once (context_kv) and reuses them every step: exactly the logits of the plain context."""
    torch.manual_seed(1)
    cfg = TokenTransformerConfig(codebook_size=10, code_dim=4, dim=16, heads=2, dim_head=8, lr_depth=1, hr_depth=3)
    gen = TokenTransformer(cfg)
    gen.load_codebook(torch.randn(10, 4))
    context = gen.encode_lr(torch.randint(0, 10, (2, 12)), (3, 4))
    cached = gen.context_kv(context)
    assert len(cached) == 3 and cached[0][0].shape == (2, 2, 1 + 12, 8)  # null key first
    sel = torch.rand(2, 12) < 0.5
    for _ in range(2):  # two "steps" on other canvases, the same cache
        ids = torch.randint(0, 11, (2, 12))  # 10 = the mask id
        assert torch.equal(gen.decode_hr(ids, cached, (3, 4)), gen.decode_hr(ids, context, (3, 4)))
        assert torch.equal(gen.decode_hr(ids, cached, (3, 4), sel), gen.decode_hr(ids, context, (3, 4), sel))
    other = gen.encode_lr(torch.randint(0, 10, (2, 12)), (3, 4))
    assert not torch.equal(gen.decode_hr(ids, gen.context_kv(other), (3, 4)), gen.decode_hr(ids, cached, (3, 4)))


def test_critic_has_one_logit_and_no_mask_token() -> None:
    cfg = TokenTransformerConfig(
        codebook_size=10, code_dim=4, dim=16, heads=2, dim_head=8, lr_depth=1, hr_depth=2, critic=True
    )
    critic = TokenTransformer(cfg)
    assert critic.mask_token is None
    out = critic(torch.randint(0, 10, (3, 6)), torch.randint(0, 10, (3, 6)), (2, 3))
    assert out.shape == (3, 6)


# --- CCM -----------------------------------------------------------------------------------
def test_ccm_zero_conv_starts_as_identity() -> None:
    tok = tiny_tokenizer()
    ccm = CCM.from_tokenizer(tok)
    assert torch.equal(ccm.zero_conv.weight, torch.zeros_like(ccm.zero_conv.weight))
    for (k, a), b in zip(ccm.encoder.state_dict().items(), tok.encoder.state_dict().values(), strict=False):
        assert torch.equal(a, b), k
    h = torch.randn(2, 8, 8, 8)
    lr_up = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(ccm(h, lr_up), h)
    # ...but it is trainable: the zero conv gets a gradient, so it will move away from zero
    loss = (ccm(h, lr_up) - h - 1).pow(2).sum()
    ccm.zero_grad()
    loss.backward()
    assert ccm.zero_conv.weight.grad is not None and ccm.zero_conv.weight.grad.abs().sum() > 0


def test_decode_with_untrained_ccm_equals_plain_decoder() -> None:
    tok = tiny_tokenizer()
    model = RealSRT.from_preset("tiny", tok)
    ids = torch.randint(0, 16, (2, 64))
    lr_up = torch.rand(2, 3, 16, 16)
    plain = model.decode(ids, (8, 8))
    steered = model.decode(ids, (8, 8), lr_up)
    ref = ((tok.decode_indices(ids.view(2, 8, 8)) + 1) / 2).clamp(0, 1)
    assert torch.allclose(plain, ref, atol=1e-6) and torch.allclose(steered, plain, atol=1e-6)


# --- the whole model -----------------------------------------------------------------------
def test_presets_match_the_paper() -> None:
    p = PRESETS["paper"]
    assert p.generator["dim"] == 512 and p.generator["heads"] == 8 and p.generator["dim_head"] == 64
    assert (p.generator["lr_depth"], p.generator["hr_depth"], p.critic["hr_depth"]) == (4, 16, 12)
    assert p.lr_patch == 64  # 64 LR -> 256 HR -> 32x32 tokens with f=8
    assert PRESETS["small"].lr_patch == 32  # 32 LR -> 128 HR -> 32x32 tokens with f=4


def test_condition_and_generation_shapes() -> None:
    tok = tiny_tokenizer()
    model = RealSRT.from_preset("tiny", tok)
    lr = torch.rand(3, 3, 8, 8)
    cond = model.condition(lr)
    assert cond.lr_up.shape == (3, 3, 32, 32) and cond.hw == (16, 16) and cond.lr.shape == (3, 256)
    res = model.generate(cond, steps=3)
    assert res.tokens.shape == (3, 256) and res.tokens.max() < 16 and len(res.steps) == 3
    assert model(lr).shape == (3, 3, 32, 32)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    tok = tiny_tokenizer()
    model = RealSRT.from_preset("tiny", tok)
    with torch.no_grad():
        model.ccm.zero_conv.weight.normal_()  # type: ignore[union-attr]
    model.save_pretrained(tmp_path / "m")
    loaded = RealSRT.from_pretrained(tmp_path / "m")
    lr = torch.rand(1, 3, 8, 8)
    assert torch.equal(loaded(lr), model(lr))
    # one folder holds everything, the tokenizer under its own prefix
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "m" / "model.safetensors")).keys()
    assert any(k.startswith("tokenizer.") for k in keys) and any(k.startswith("critic.") for k in keys)
    assert any(k.startswith("ccm.") for k in keys)


def test_stagewise_model_without_critic_and_ccm(tmp_path: Path) -> None:
    tok = tiny_tokenizer()
    model = RealSRT.create(tok, PRESETS["tiny"].generator, scale=4, lr_patch=8)
    assert model.critic is None and model.ccm is None
    model.save_pretrained(tmp_path / "g")
    loaded = RealSRT.from_pretrained(tmp_path / "g")
    assert loaded.critic is None and loaded.ccm is None
    lr = torch.rand(1, 3, 8, 8)
    out = loaded(lr, confidence="generator", use_ccm=False)
    assert out.shape == (1, 3, 32, 32)
    with pytest.raises(ValueError):
        loaded(lr, confidence="critic", use_ccm=False)
    assert math.isfinite(float(out.sum()))


def test_a_misspelt_sub_module_setting_names_the_nearest_field() -> None:
    """Every nested model config is checked the one way (tokensr.pretrained.check_fields)."""
    from tokensr.methods.ugtsr.model import UGTSR, UGTSRConfig
    from tokensr.pretrained import check_fields, config_from_dict

    with pytest.raises(ValueError, match=r"unknown transformer setting 'hr_dept' \(did you mean 'hr_depth'\?\)"):
        config_from_dict(TokenTransformerConfig, {"dim": 32, "hr_dept": 2}, where="transformer")
    assert config_from_dict(TokenTransformerConfig, {"dim": 32, "model_type": "x", "future": 1}).dim == 32
    with pytest.raises(ValueError, match="unknown ugtsr model setting 'scale'"):
        check_fields(UGTSRConfig, {"scale": 2}, "ugtsr model", exclude=("scale", "tokenizer"))
    with pytest.raises(ValueError, match=r"unknown ugtsr model setting 'top_kk' \(did you mean 'top_k'\?\)"):
        UGTSR.create(_tiny_tokenizer(), preset="tiny", top_kk=3)
