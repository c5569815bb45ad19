"""UGTSR network pieces: Top-k selection, fusion, Align-Attention, decoder walk, save/load."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_tokenizer as _tiny_tokenizer

from tokensr.methods.ugtsr.align import AlignAttention
from tokensr.methods.ugtsr.fusion import SELECT_PRIOR, TopKFusion, TopKSelect, gather_codes
from tokensr.methods.ugtsr.model import UGTSR, pad_lr
from tokensr.nn.quantizer import knn_codes
from tokensr.nn.vqgan import VQGAN


def tiny_tokenizer(ch_mult: tuple[int, ...] = (1, 2, 4), seed: int = 0) -> VQGAN:
    return _tiny_tokenizer(seed, ch_mult)


@pytest.fixture(scope="module")
def tok() -> VQGAN:
    return tiny_tokenizer()


def test_knn_codes_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    codebook = torch.randn(16, 4, generator=g)
    z = torch.randn(2, 4, 3, 5, generator=g)
    idx = knn_codes(z, codebook, 5, chunk=7)  # several chunks
    assert idx.shape == (2, 5, 3, 5)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    want = torch.cdist(flat, codebook).argsort(dim=1)[:, :5].view(2, 3, 5, 5).permute(0, 3, 1, 2)
    assert torch.equal(idx, want)
    # nearest first: distances are non-decreasing along k
    d = (gather_codes(codebook, idx) - z[:, None]).pow(2).sum(2)
    assert (d[:, 1:] >= d[:, :-1] - 1e-6).all()
    with pytest.raises(ValueError):
        knn_codes(z, codebook, 17)


def test_top1_equals_the_tokenizer_quantizer(tok: VQGAN) -> None:
    z = tok.encode_continuous(torch.rand(1, 3, 16, 16) * 2 - 1)
    idx = knn_codes(z, tok.quantizer.codebook, 1)[:, 0]
    assert torch.equal(idx, tok.quantizer(z).indices)


def test_topk_fusion_starts_as_nearest_and_learns() -> None:
    torch.manual_seed(0)
    fusion = TopKFusion(code_dim=8, k=3, dim=16, heads=2, blocks=1, expansion=2.0)
    cands = torch.randn(2, 3, 8, 5, 6)
    assert torch.equal(fusion(cands), cands[:, 0])  # zero-initialised correction
    with torch.no_grad():
        fusion.out.weight.normal_()
    out = fusion(cands)
    assert out.shape == (2, 8, 5, 6) and not torch.allclose(out, cands[:, 0])
    # it uses the other candidates, not only the first
    changed = cands.clone()
    changed[:, 2] += 1.0
    assert not torch.allclose(fusion(changed), out)
    with pytest.raises(ValueError):
        fusion(cands[:, :2])
    with_lq = TopKFusion(8, 3, 16, 2, 1, 2.0, with_lq=True)
    with pytest.raises(ValueError):
        with_lq(cands)


def test_topk_select_starts_on_the_nearest_and_weights_the_candidates() -> None:
    torch.manual_seed(0)
    sel = TopKSelect(code_dim=8, k=3, dim=16, heads=2, blocks=1, expansion=2.0)
    cands = torch.randn(2, 3, 8, 5, 6)
    logits = sel(cands)
    assert logits.shape == (2, 3, 5, 6)
    assert torch.equal(logits, torch.tensor([SELECT_PRIOR, 0.0, 0.0]).view(1, 3, 1, 1).expand_as(logits))
    fused, slot = sel.combine(cands, logits)
    assert torch.equal(slot, torch.zeros(2, 5, 6, dtype=torch.long))  # the nearest candidate everywhere
    w = logits.softmax(1)
    assert torch.allclose(fused, (w[:, :, None] * cands).sum(1))
    # the head learns from the trunk features (zero weights still get a gradient)
    fused.sum().backward()
    assert sel.select.weight.grad is not None and sel.select.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        sel(cands[:, :2])


def _manual_attention(att: AlignAttention, q_feats: torch.Tensor, kv_feats: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d_k)) V for one window, written out: q_feats [n, Cq], kv [m, Ckv]."""
    q = att.to_q(att.norm_q(q_feats))
    kv = att.norm_kv(kv_feats)
    k, v = att.to_k(kv), att.to_v(kv)
    n, d = q.shape
    dh = d // att.heads
    outs = []
    for hd in range(att.heads):
        sl = slice(hd * dh, (hd + 1) * dh)
        w = (q[:, sl] @ k[:, sl].t() / math.sqrt(dh)).softmax(-1)
        outs.append(w @ v[:, sl])
    return att.proj(torch.cat(outs, dim=1))


def test_align_attention_is_windowed_cross_attention_with_masked_padding() -> None:
    torch.manual_seed(0)
    att = AlignAttention(q_dim=6, kv_dim=4, out_dim=5, dim=8, heads=2, window=4)
    lq, hq = torch.randn(1, 6, 5, 6), torch.randn(1, 4, 5, 6)
    assert torch.equal(att(lq, hq), torch.zeros(1, 5, 5, 6))  # zero-initialised output projection
    with torch.no_grad():
        att.proj.weight.normal_()
        att.proj.bias.normal_()
    out = att(lq, hq)
    assert out.shape == (1, 5, 5, 6)
    # window rows 4..7, cols 4..7 of the padded 8x8 map: valid pixels are row 4, cols 4..5
    q_pix = lq[0, :, 4, 4:6].t()
    kv_pix = hq[0, :, 4, 4:6].t()
    want = _manual_attention(att, q_pix, kv_pix)
    assert torch.allclose(out[0, :, 4, 4:6].t(), want, atol=1e-5)
    # first window, fully inside the map: 16 keys
    q_pix = lq[0, :, :4, :4].permute(1, 2, 0).reshape(16, 6)
    kv_pix = hq[0, :, :4, :4].permute(1, 2, 0).reshape(16, 4)
    want = _manual_attention(att, q_pix, kv_pix).view(4, 4, 5).permute(2, 0, 1)
    assert torch.allclose(out[0, :, :4, :4], want, atol=1e-5)
    # the query comes from the LQ side only: keys/values decide what is read
    assert not torch.allclose(att(lq, torch.randn_like(hq)), out)
    with pytest.raises(ValueError):
        att(lq, hq[..., :4])


def test_align_attention_keys_values_are_the_matched_codes(tok: VQGAN) -> None:
    model = UGTSR.create(tok, scale=4, preset="tiny", top_k=3, align_attention=True)
    seen: dict[str, torch.Tensor] = {}
    model.align["0"].register_forward_hook(lambda m, args, out: seen.update(q=args[0], kv=args[1]))
    out = model(torch.rand(2, 3, 12, 10))
    codes = tok.quantizer.codebook[out.indices].permute(0, 3, 1, 2)
    assert torch.equal(seen["kv"], codes)  # K = V input: codebook vectors of the decoded codes
    feat, _ = model.encoder(torch.rand(1, 3, 4, 4))
    assert seen["q"].shape[1] == feat.shape[1] == model.config.swin_dim  # Q: the LQ encoder features


def test_untrained_model_decodes_the_matched_codes_exactly(tok: VQGAN) -> None:
    """Every new layer writing into the frozen decoder is zero-initialised."""
    for kw in ({"top_k": 1, "align_attention": False}, {"top_k": 3, "align_attention": True}):
        model = UGTSR.create(tok, scale=4, preset="tiny", **kw)
        out = model(torch.rand(1, 3, 8, 12))
        with torch.no_grad():
            plain = tok.decode(tok.quantizer.lookup(out.indices))
        assert torch.allclose(out.image * 2 - 1, plain, atol=1e-5)
        # untrained fusion = nearest neighbour
        assert torch.equal(out.indices, out.candidates[:, 0])


def test_topk_changes_the_matching_once_trained(tok: VQGAN) -> None:
    torch.manual_seed(1)
    model = UGTSR.create(tok, scale=4, preset="tiny", top_k=3)
    with torch.no_grad():
        model.fusion.out.weight.normal_(std=2.0)  # type: ignore[union-attr]
    lr = torch.rand(1, 3, 12, 12)
    k3, k1 = model(lr), model(lr, top_k=1)
    assert k3.candidates.shape[1] == 3 and k1.candidates.shape[1] == 1
    assert torch.equal(k1.indices, k3.candidates[:, 0])
    assert k3.z_fused is not None and k1.z_fused is None
    assert not torch.equal(k3.indices, k1.indices)
    # the final code is the nearest code of the fused feature
    assert torch.equal(k3.indices, knn_codes(k3.z_fused, model.codebook, 1)[:, 0])
    with pytest.raises(ValueError):
        model(lr, top_k=5)


def test_untrained_select_fusion_is_nearest_matching(tok: VQGAN) -> None:
    model = UGTSR.create(tok, scale=4, preset="tiny", top_k=3, fusion_mode="select")
    assert isinstance(model.fusion, TopKSelect) and model.config.fusion_mode == "select"
    lr = torch.rand(2, 3, 12, 10)
    out, k1 = model(lr), model(lr, top_k=1)
    assert torch.equal(out.indices, out.candidates[:, 0]) and torch.equal(out.indices, k1.indices)
    assert out.select_logits is not None and out.select_logits.shape == (2, 3, 12, 10)
    assert k1.select_logits is None and k1.z_fused is None
    with torch.no_grad():
        plain = tok.decode(tok.quantizer.lookup(out.indices))
    assert torch.allclose(out.image * 2 - 1, plain, atol=1e-5)
    assert torch.allclose(out.image, k1.image, atol=1e-5)


def test_select_fusion_can_choose_another_code(tok: VQGAN) -> None:
    model = UGTSR.create(tok, scale=4, preset="tiny", top_k=3, fusion_mode="select")
    assert model.fusion is not None
    lr = torch.rand(1, 3, 12, 12)
    nearest = model(lr)
    with torch.no_grad():
        model.fusion.select.bias.copy_(torch.tensor([0.0, 10.0, 0.0]))  # toward candidate 2 of 3
    out = model(lr)
    assert torch.equal(out.indices, out.candidates[:, 1])
    assert (out.indices != out.candidates[:, 0]).all()
    assert not torch.allclose(out.image, nearest.image)
    # the decoder sees the chosen code; z' (the softmax mix) only carries the gradient
    with torch.no_grad():
        plain = tok.decode(tok.quantizer.lookup(out.indices))
    assert torch.allclose(out.image * 2 - 1, plain, atol=1e-5)
    # per pixel: the candidate of the largest logit
    with torch.no_grad():
        model.fusion.select.weight.normal_(std=3.0)
    out = model(lr)
    assert out.select_logits is not None
    want = out.candidates.gather(1, out.select_logits.argmax(1, keepdim=True))[:, 0]
    assert torch.equal(out.indices, want)
    assert (out.indices != out.candidates[:, 0]).any()


@pytest.mark.parametrize(
    "ch_mult,scale,lr_hw,token_hw",
    [
        ((1, 2, 4), 4, (12, 10), (12, 10)),  # f=4 x4: no resampling
        ((1, 2, 4), 2, (12, 10), (6, 5)),  # f=4 x2: one downsampling
        ((1, 2, 2, 4), 2, (12, 8), (3, 2)),  # f=8 x2: two downsamplings
        ((1, 2), 4, (6, 5), (12, 10)),
    ],  # f=2 x4: one upsampling
)
def test_any_factor_and_scale(
    ch_mult: tuple[int, ...], scale: int, lr_hw: tuple[int, int], token_hw: tuple[int, int]
) -> None:
    tok = tiny_tokenizer(ch_mult)
    model = UGTSR.create(tok, scale=scale, preset="tiny", fusion_stages=tuple(range(1, len(ch_mult))))
    out = model(torch.rand(1, 3, *lr_hw), with_uncertainty=True)
    h, w = lr_hw
    assert out.image.shape == (1, 3, h * scale, w * scale)
    assert out.indices.shape == (1, *token_hw) and out.z_lq.shape == (1, 8, *token_hw)
    assert out.uncertainty is not None and out.uncertainty.shape == (1, 1, h * scale, w * scale)
    # any LR size through upscale (padding + crop)
    sr = model.upscale(torch.rand(1, 3, 7, 9))
    assert sr.shape == (1, 3, 7 * scale, 9 * scale) and torch.isfinite(sr).all()


def test_config_validation(tok: VQGAN) -> None:
    with pytest.raises(ValueError):
        UGTSR.create(tok, scale=3, preset="tiny")  # f / s not a power of two
    with pytest.raises(ValueError):
        UGTSR.create(tok, preset="tiny", top_k=17)  # more than K codes
    with pytest.raises(ValueError):
        UGTSR.create(tok, preset="tiny", fusion_stages=(3,))
    with pytest.raises(ValueError):
        UGTSR.create(tok, preset="tiny", align_stages=(0, 2))  # stage 2 is not fused
    with pytest.raises(ValueError):
        UGTSR.create(tok, preset="huge")
    with pytest.raises(ValueError):
        UGTSR.create(tok, preset="tiny", top_kk=3)
    with pytest.raises(ValueError, match="fusion_mode"):
        UGTSR.create(tok, preset="tiny", fusion_mode="vote")
    model = UGTSR.create(tok, scale=2, preset="tiny")
    with pytest.raises(ValueError):
        model(torch.rand(1, 3, 5, 6))  # odd LR side at x2 needs padding first
    assert pad_lr(torch.rand(1, 3, 5, 6), 2).shape[-2:] == (6, 6)


def test_save_load_roundtrip_and_stage_upgrade(tok: VQGAN, tmp_path: Path) -> None:
    model = UGTSR.create(tok, scale=4, preset="tiny", top_k=1, align_attention=False)
    with torch.no_grad():
        for m in model.inject.values():
            m.weight.normal_(std=0.3)  # type: ignore[operator]
    lr = torch.rand(1, 3, 8, 8)
    want = model(lr).image
    model.save_pretrained(tmp_path / "s1")
    loaded = UGTSR.from_pretrained(tmp_path / "s1")
    assert torch.equal(loaded(lr).image, want)
    assert not loaded.tokenizer.training
    loaded.train()
    assert loaded.encoder.training and not loaded.tokenizer.training  # the tokenizer stays in eval
    # stage II from stage I: new fusion / align-attention start fresh (zero-init -> same image)
    up = UGTSR.from_stage(tmp_path / "s1", top_k=3, align_attention=True)
    assert up.fusion is not None and "0" in up.align
    assert torch.equal(up.encoder.conv_in.weight, model.encoder.conv_in.weight)
    assert torch.allclose(up(lr).image, want, atol=1e-5)
    with pytest.raises(ValueError):
        UGTSR.from_stage(tmp_path / "s1", enc_ch=4)  # an encoder of another size does not fit
    with pytest.raises(ValueError):
        UGTSR.from_stage(tmp_path / "s1", scale=2)


def test_select_fusion_save_load_roundtrip(tok: VQGAN, tmp_path: Path) -> None:
    model = UGTSR.create(tok, scale=4, preset="tiny", top_k=3, fusion_mode="select")
    assert model.fusion is not None
    with torch.no_grad():
        model.fusion.select.weight.normal_(std=3.0)
    lr = torch.rand(1, 3, 8, 8)
    want = model(lr)
    model.save_pretrained(tmp_path / "sel")
    assert json.loads((tmp_path / "sel" / "config.json").read_text())["fusion_mode"] == "select"
    loaded = UGTSR.from_pretrained(tmp_path / "sel")
    assert loaded.config.fusion_mode == "select" and isinstance(loaded.fusion, TopKSelect)
    got = loaded(lr)
    assert torch.equal(got.indices, want.indices) and torch.equal(got.image, want.image)
    assert (got.indices != got.candidates[:, 0]).any()
    # a residual stage-II model continued as select: the trunk carries over, the head starts fresh
    residual = UGTSR.create(tok, scale=4, preset="tiny", top_k=3)
    residual.save_pretrained(tmp_path / "res")
    up = UGTSR.from_stage(tmp_path / "res", fusion_mode="select")
    assert isinstance(up.fusion, TopKSelect) and residual.fusion is not None
    assert torch.equal(up.fusion.inp.weight, residual.fusion.inp.weight)
    # a saved config without the field (every folder written before it) is a residual fusion
    data = json.loads((tmp_path / "res" / "config.json").read_text())
    del data["fusion_mode"]
    (tmp_path / "res" / "config.json").write_text(json.dumps(data))
    old = UGTSR.from_pretrained(tmp_path / "res")
    assert old.config.fusion_mode == "residual" and isinstance(old.fusion, TopKFusion)


def test_gt_indices_are_the_tokenizer_codes(tok: VQGAN) -> None:
    model = UGTSR.create(tok, scale=4, preset="tiny")
    hr = torch.rand(2, 3, 16, 20)
    assert torch.equal(model.gt_indices(hr), tok.tokenize(hr))


def test_warm_start_x2_from_x4_copies_every_shared_weight(tok: VQGAN, tmp_path: Path) -> None:
    torch.manual_seed(3)
    x4 = UGTSR.create(tok, scale=4, preset="tiny", top_k=3, align_attention=True, uncertainty_head=True)
    with torch.no_grad():
        for p in x4.encoder.parameters():
            p.normal_()
    x4.save_pretrained(tmp_path / "x4")
    x2 = UGTSR.create(tok, scale=2, preset="tiny", top_k=3, align_attention=True, uncertainty_head=True)
    before = {k: v.clone() for k, v in x2.state_dict().items()}
    copied, bridged, fresh = x2.warm_start(tmp_path / "x4", bridge=False)
    assert bridged == []
    after, source = x2.state_dict(), x4.state_dict()
    for part in ("encoder.swin.", "encoder.to_code.", "fusion.", "align.", "uncertainty.", "encoder.conv_in."):
        assert any(k.startswith(part) for k in copied), part
    for k in copied:
        assert torch.equal(after[k], source[k])
    # the layers that change resolution differ in shape (or exist only at x2) and stay fresh
    assert "encoder.to_swin.weight" in fresh and not any(k.startswith("tokenizer.") for k in fresh + copied)
    for k in fresh:
        assert torch.equal(after[k], before[k])
    assert set(copied) | set(fresh) == {k for k in after if not k.startswith("tokenizer.")}
    with pytest.raises(ValueError, match="another tokenizer"):
        UGTSR.create(tiny_tokenizer(ch_mult=(1, 2)), scale=2, preset="tiny").warm_start(tmp_path / "x4")


def test_bridged_x2_encoder_computes_the_x4_encoder_on_pooled_features(tok: VQGAN, tmp_path: Path) -> None:
    """With the bridge, the x2 encoder starts as the x4 one with a 2x2 average pool after its
    LR-resolution blocks: the extra downsampling pools, the widening block passes ``[x; 0]``
    and ``to_swin`` reads the first channels with the x4 weights."""
    torch.manual_seed(4)
    x4 = UGTSR.create(tok, scale=4, preset="tiny", top_k=3, align_attention=True)
    with torch.no_grad():
        for p in x4.encoder.parameters():
            p.normal_(0, 0.3)
    x4.save_pretrained(tmp_path / "x4")
    x2 = UGTSR.create(tok, scale=2, preset="tiny", top_k=3, align_attention=True)
    copied, bridged, fresh = x2.warm_start(tmp_path / "x4")
    assert "encoder.to_swin.weight" in bridged and not set(bridged) & set(copied)
    # fresh in the encoder: only what feeds the zeroed conv2 of the widening block
    assert {k.split(".")[3] for k in fresh if k.startswith("encoder.")} == {"conv1", "norm1", "norm2"}
    x = torch.rand(2, 3, 16, 24) * 2 - 1
    e4 = x4.encoder
    with torch.no_grad():
        pooled = F.avg_pool2d(e4.body(e4.conv_in(x)), 2)
        want = e4.swin(e4.to_swin(pooled))
        got, _ = x2.encoder(x)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5)
    # the to_swin weights on the new (zero at first) channels stay random, so they can learn
    extra = x2.encoder.to_swin.weight[:, e4.to_swin.weight.shape[1] :]
    assert extra.abs().sum() > 0
