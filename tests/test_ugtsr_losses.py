"""UGTSR losses against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from tokensr.methods.ugtsr.losses import (
    TokenizerFeatureLoss,
    candidate_cross_entropy,
    candidate_targets,
    codebook_loss,
    esu_loss,
    gram_matrix,
    pixel_error,
    udl_loss,
    udl_weight,
)
from tokensr.nn.vqgan import VQGAN, VQGANConfig


def test_esu_loss_one_channel_by_hand() -> None:
    # one image, 3 channels, 1 x 2 pixels
    sr = torch.tensor([[[[0.0, 0.5]], [[0.2, 0.5]], [[0.4, 0.5]]]])
    hr = torch.tensor([[[[0.3, 0.5]], [[0.2, 0.9]], [[0.1, 0.2]]]])
    s = torch.tensor([[[[0.5, -1.0]]]])
    # per-pixel error = mean over channels of |hr - sr|
    e0 = (0.3 + 0.0 + 0.3) / 3
    e1 = (0.0 + 0.4 + 0.3) / 3
    want = ((math.exp(-0.5) * e0 + 2 * 0.5) + (math.exp(1.0) * e1 + 2 * -1.0)) / 2
    assert esu_loss(sr, hr, s).item() == pytest.approx(want, rel=1e-6)


def test_esu_loss_per_channel_and_minimiser() -> None:
    g = torch.Generator().manual_seed(0)
    sr, hr = torch.rand(2, 3, 4, 5, generator=g), torch.rand(2, 3, 4, 5, generator=g)
    s = torch.randn(2, 3, 4, 5, generator=g)
    err = (hr - sr).abs()
    assert esu_loss(sr, hr, s).item() == pytest.approx((torch.exp(-s) * err + 2 * s).mean().item(), rel=1e-6)
    # d/ds [exp(-s) e + 2 s] = 0  at  s = ln(e / 2): the head learns where the error is large
    s_opt = torch.log(err / 2).requires_grad_(True)
    esu_loss(sr, hr, s_opt).backward()
    assert s_opt.grad is not None and s_opt.grad.abs().max().item() < 1e-6


def test_udl_loss_by_hand_and_frozen_uncertainty() -> None:
    sr = torch.zeros(2, 1, 1, 3, requires_grad=True)
    hr = torch.tensor([[[[1.0, 2.0, 3.0]]], [[[1.0, 1.0, 1.0]]]])
    s = torch.tensor([[[[0.5, 1.5, 2.5]]], [[[-1.0, 0.0, 1.0]]]], requires_grad=True)
    # per image: s - min(s) = [0, 1, 2] and [0, 1, 2]
    want = (0 * 1 + 1 * 2 + 2 * 3 + 0 * 1 + 1 * 1 + 2 * 1) / 6
    loss = udl_loss(sr, hr, s)
    assert loss.item() == pytest.approx(want)
    # over the batch: min = -1 -> [1.5, 2.5, 3.5] and [0, 1, 2]
    want_batch = (1.5 * 1 + 2.5 * 2 + 3.5 * 3 + 0 + 1 + 2) / 6
    assert udl_loss(sr, hr, s, reduce_min="batch").item() == pytest.approx(want_batch)
    loss.backward()
    assert s.grad is None  # stage II never trains the uncertainty
    assert (udl_weight(s) >= 0).all()
    with pytest.raises(ValueError):
        udl_weight(s, "pixel")


def test_udl_gives_textured_pixels_more_weight() -> None:
    sr = torch.zeros(1, 3, 1, 2, requires_grad=True)
    hr = torch.ones(1, 3, 1, 2)
    s = torch.tensor([[[[0.0, 3.0]]]])
    udl_loss(sr, hr, s).backward()
    assert sr.grad is not None
    assert sr.grad[..., 0].abs().sum() == 0 and sr.grad[..., 1].abs().sum() > 0


def test_pixel_error_channels() -> None:
    x, y = torch.rand(1, 3, 2, 2), torch.rand(1, 3, 2, 2)
    assert pixel_error(x, y, 3).shape == (1, 3, 2, 2)
    assert torch.allclose(pixel_error(x, y, 1), (x - y).abs().mean(1, keepdim=True))
    with pytest.raises(ValueError):
        pixel_error(x, y, 2)


def test_gram_and_codebook_loss_by_hand() -> None:
    z = torch.tensor([[[[1.0, 2.0]], [[0.0, 3.0]]]])  # [1, C=2, 1, 2]
    g = gram_matrix(z)[0]
    # rows (1, 2) and (0, 3), divided by H*W = 2
    assert torch.allclose(g, torch.tensor([[5.0, 6.0], [6.0, 9.0]]) / 2)
    z_gt = torch.zeros_like(z)
    total, logs = codebook_loss(z, z_gt, beta=0.25, alpha=1.0)
    l2 = (1 + 4 + 0 + 9) / 4
    gram = ((2.5**2) + 3.0**2 + 3.0**2 + 4.5**2) / 4
    assert logs["cb_l2"] == pytest.approx(l2) and logs["cb_gram"] == pytest.approx(gram)
    assert total.item() == pytest.approx(0.25 * l2 + gram)
    only_l2, logs = codebook_loss(z, z_gt, beta=0.25, alpha=0.0)
    assert only_l2.item() == pytest.approx(0.25 * l2) and "cb_gram" not in logs


def test_tokenizer_feature_loss() -> None:
    torch.manual_seed(0)
    tok = (
        VQGAN(VQGANConfig(ch=8, ch_mult=(1, 2), num_res_blocks=1, mid_attention=False, code_dim=8, codebook_size=16))
        .eval()
        .requires_grad_(False)
    )
    loss = TokenizerFeatureLoss(tok)
    assert list(loss.parameters()) == []  # references the encoder, does not own it
    y = torch.rand(2, 3, 16, 16) * 2 - 1
    x = y.clone().requires_grad_(True)
    assert torch.allclose(loss(x, y), torch.zeros(2))
    x2 = (y + 0.3 * torch.randn_like(y)).requires_grad_(True)
    v = loss(x2, y)
    assert v.shape == (2,) and (v > 0).all()
    v.sum().backward()
    assert x2.grad is not None and x2.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        TokenizerFeatureLoss(tok, "l3")


def test_candidate_cross_entropy_ignores_pixels_without_the_gt() -> None:
    # 1 image, 3 pixels, k = 3: GT in slot 1, in slot 0, and not among the candidates
    cands = torch.tensor([[[[5, 1, 2]], [[7, 3, 4]], [[9, 6, 8]]]])  # [B, k, h, w] = [1, 3, 1, 3]
    gt = torch.tensor([[[7, 1, 0]]])
    assert candidate_targets(cands, gt).tolist() == [[[1, 0, -1]]]
    logits = torch.randn(1, 3, 1, 3, requires_grad=True)
    loss, logs = candidate_cross_entropy(logits, cands, gt)
    ce = -logits.log_softmax(1)
    want = (ce[0, 1, 0, 0] + ce[0, 0, 0, 1]) / 2
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    assert logs["select_hit"] == pytest.approx(2 / 3)
    # the ignored pixel neither counts nor gets a gradient
    loss.backward()
    assert logits.grad is not None and torch.equal(logits.grad[..., 2], torch.zeros(1, 3, 1))
    other = logits.detach().clone()
    other[..., 2] = 50.0
    assert candidate_cross_entropy(other, cands, gt)[0].item() == pytest.approx(loss.item())
    # the argmax accuracy over the pixels that have the GT
    # per pixel (columns) the slot logits: pixel 0 -> slot 1, pixel 1 -> slot 0 (both right)
    sure = torch.tensor([[[[0.0, 9.0, 0.0]], [[9.0, 0.0, 0.0]], [[0.0, 0.0, 9.0]]]])
    assert candidate_cross_entropy(sure, cands, gt)[1]["select_acc"] == 1.0
    sure[0, 2, 0, 1] = 20.0  # pixel 1 now picks slot 2 (wrong)
    assert candidate_cross_entropy(sure, cands, gt)[1]["select_acc"] == 0.5
    # no pixel with the GT among the candidates: zero, not NaN
    none, logs = candidate_cross_entropy(logits, cands, torch.full_like(gt, 15))
    assert none.item() == 0.0 and logs["select_hit"] == 0.0
