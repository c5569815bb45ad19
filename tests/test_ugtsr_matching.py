"""UGTSR matching accuracy: counting by hand, and against a tiny random model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tokensr.methods.ugtsr.matching import MatchingAccuracy, add_pair, crop_pair, markdown_table, measure
from tokensr.methods.ugtsr.model import UGTSR
from tokensr.nn.vqgan import VQGAN, VQGANConfig


def tiny_model(scale: int = 4, top_k: int = 3) -> UGTSR:
    torch.manual_seed(0)
    tok = VQGAN(
        VQGANConfig(ch=8, ch_mult=(1, 2, 4), num_res_blocks=1, mid_attention=False, code_dim=8, codebook_size=16)
    )
    tok.train()
    with torch.no_grad():
        tok(torch.rand(2, 3, 32, 32) * 2 - 1)
    model = UGTSR.create(tok.eval(), scale=scale, preset="tiny", top_k=top_k)
    if model.fusion is not None:
        with torch.no_grad():
            model.fusion.out.weight.normal_(std=1.0)
    return model


def test_counts_by_hand() -> None:
    acc = MatchingAccuracy((1, 3, 5))
    gt = torch.tensor([[[4, 7, 9, 2]]])  # 4 tokens
    cands = torch.tensor([[[[4, 1, 3, 6]], [[0, 2, 9, 5]], [[5, 7, 1, 8]], [[6, 8, 0, 9]], [[1, 3, 2, 2]]]])
    final = torch.tensor([[[4, 7, 0, 0]]])
    acc.add(gt, cands, final)
    # token 0: rank 1; token 1: rank 3; token 2: rank 2; token 3: rank 5
    assert acc.share(1) == pytest.approx(1 / 4)
    assert acc.share(3) == pytest.approx(3 / 4)
    assert acc.share(5) == pytest.approx(4 / 4)
    assert acc.share(None) == pytest.approx(2 / 4)
    # final != top-1 at tokens 1, 2, 3; right only by the change at token 1; none lost
    assert acc.row() == {
        "top1": 0.25,
        "top3": 0.75,
        "top5": 1.0,
        "final": 0.5,
        "changed": 0.75,
        "gained": 0.25,
        "lost": 0.0,
    }
    assert acc.share(None) == acc.share(1) + acc.share_of(acc.gained) - acc.share_of(acc.lost)
    assert acc.tokens == 4 and acc.images == 1
    assert MatchingAccuracy().share(1) != MatchingAccuracy().share(1)  # NaN when empty


def test_measure_agrees_with_a_direct_computation() -> None:
    model = tiny_model(4, top_k=3)
    g = torch.Generator().manual_seed(0)
    hr = F.interpolate(torch.rand(2, 3, 6, 6, generator=g), size=(48, 40), mode="bicubic").clamp(0, 1)
    lr = F.interpolate(hr, scale_factor=0.25, mode="area")
    acc = measure(model, [(lr[0], hr[0]), (lr[1:], hr[1:])])
    assert acc.images == 2 and acc.tokens == 2 * 12 * 10
    shares = [acc.share(k) for k in (1, 3, 5)]
    assert shares == sorted(shares) and 0 <= shares[0] and shares[2] <= 1
    with torch.no_grad():
        gt = model.tokenizer.tokenize(hr)
        out = model(lr)
        z = out.z_lq.permute(0, 2, 3, 1).reshape(-1, 8)
        rank = torch.cdist(z, model.codebook).argsort(1)
        top3 = (rank[:, :3] == gt.reshape(-1, 1)).any(1).float().mean().item()
        final = (out.indices == gt).float().mean().item()
    assert acc.share(3) == pytest.approx(top3)
    assert acc.share(None) == pytest.approx(final)
    # measured with plain nearest matching, the final code is the top-1 code
    acc1 = measure(model, [(lr, hr)], top_k=1)
    assert acc1.share(None) == pytest.approx(acc1.share(1)) == pytest.approx(acc.share(1))


def test_crop_pair_for_x2() -> None:
    model = tiny_model(2, top_k=1)
    lr, hr = torch.rand(1, 3, 11, 9), torch.rand(1, 3, 22, 18)
    lr2, hr2 = crop_pair(lr, hr, model)
    assert lr2.shape[-2:] == (10, 8) and hr2.shape[-2:] == (20, 16)
    assert torch.equal(hr2, hr[..., :20, :16])
    lr3, hr3 = crop_pair(lr, hr, model, max_lr=6)
    assert lr3.shape[-2:] == (6, 6) and torch.equal(lr3, lr[..., 2:8, 1:7]) and torch.equal(hr3, hr[..., 4:16, 2:14])
    acc = MatchingAccuracy()
    add_pair(acc, model, lr, hr)
    assert acc.tokens == 5 * 4
    with pytest.raises(ValueError):
        crop_pair(lr, hr[..., :10, :], model)


def test_markdown_table() -> None:
    acc = MatchingAccuracy((1, 3))
    acc.add(torch.tensor([[[1, 2]]]), torch.tensor([[[[1, 0]], [[0, 2]]]]), torch.tensor([[[1, 0]]]))
    text = markdown_table([("k3 on set14", acc)], (1, 3))
    lines = text.strip().splitlines()
    assert lines[0].startswith("| model |") and "top-3 (%)" in lines[0] and "final code (%)" in lines[0]
    assert "final != top-1 (%)" in lines[0]
    assert lines[2] == "| k3 on set14 | 1 | 2 | 50.00 | 100.00 | 50.00 | 0.00 |"


def test_select_fusion_reports_the_chosen_code() -> None:
    """A select fusion forced to its second candidate: every final code differs from the
    nearest one, and ``final`` counts the second candidates that are right."""
    torch.manual_seed(0)
    tok = VQGAN(
        VQGANConfig(ch=8, ch_mult=(1, 2, 4), num_res_blocks=1, mid_attention=False, code_dim=8, codebook_size=16)
    )
    model = UGTSR.create(tok.eval(), scale=4, preset="tiny", top_k=3, fusion_mode="select")
    g = torch.Generator().manual_seed(0)
    hr = F.interpolate(torch.rand(1, 3, 6, 6, generator=g), size=(48, 40), mode="bicubic").clamp(0, 1)
    lr = F.interpolate(hr, scale_factor=0.25, mode="area")
    acc = measure(model, [(lr, hr)])
    assert acc.share(None) == pytest.approx(acc.share(1)) and acc.changed == 0  # untrained: nearest
    with torch.no_grad():
        model.fusion.select.bias.copy_(torch.tensor([0.0, 10.0, 0.0]))  # type: ignore[union-attr]
    acc = measure(model, [(lr, hr)])
    with torch.no_grad():
        gt = model.tokenizer.tokenize(hr)
        second = model(lr).candidates[:, 1]
    assert acc.changed == acc.tokens
    assert acc.share(None) == pytest.approx((second == gt).float().mean().item())
    assert acc.gained == int((second == gt).sum()) and acc.lost == round(acc.share(1) * acc.tokens)
