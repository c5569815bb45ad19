"""Training losses: hinge GAN, taming's adaptive weight, SSIM / MS-SSIM, the VGG19
perceptual loss (with a generated torchvision-format weight file) and the discriminators."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from tokensr.errors import OptionError
from tokensr.nn import losses as L
from tokensr.nn.discriminator import NLayerDiscriminator, UNetDiscriminatorSN, build_discriminator
from tokensr.nn.vgg import VGG19Features, VGGWeightsError, find_vgg19, layer_names


# --- GAN ------------------------------------------------------------------------------------
def test_hinge_losses_by_hand() -> None:
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - real) = 0, 0.5, 2
    fake = torch.tensor([-2.0, 0.0, 1.0])  # relu(1 + fake) = 0, 1, 2
    assert L.hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (2.5 / 3 + 3 / 3))
    assert L.hinge_g_loss(fake).item() == pytest.approx(1 / 3)


def test_adaptive_weight_is_gradient_norm_ratio() -> None:
    layer = nn.Parameter(torch.randn(3, 4))
    a = torch.tensor([[3.0, 0, 0, 0], [0, 4.0, 0, 0], [0, 0, 0, 0]])  # |a| = 5
    b = torch.full((3, 4), 0.5)  # |b| = sqrt(12) / 2
    nll, g = (layer * a).sum(), (layer * b).sum()
    w = L.adaptive_gan_weight(nll, g, layer)
    assert w.item() == pytest.approx(5.0 / (math.sqrt(12) / 2 + 1e-4), rel=1e-5)
    assert not w.requires_grad
    # clamped at max_weight when the GAN gradient vanishes
    tiny = (layer * 1e-9).sum()
    assert L.adaptive_gan_weight((layer * a).sum(), tiny, layer, max_weight=10.0).item() == 10.0
    # no gradient to take (validation under no_grad): zero
    with torch.no_grad():
        assert L.adaptive_gan_weight((layer * a).sum(), (layer * b).sum(), layer).item() == 0.0


def test_codebook_loss_routes_gradients() -> None:
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    codes = torch.randn(2, 4, 3, 3, requires_grad=True)
    L.codebook_loss(z, codes, beta=0.25).backward()
    diff = (z - codes).detach()
    n = diff.numel()
    assert torch.allclose(z.grad, 0.25 * 2 * diff / n, atol=1e-7)  # commitment only
    assert torch.allclose(codes.grad, -2 * diff / n, atol=1e-7)  # codebook term only
    z.grad = None
    assert torch.allclose(L.codebook_loss(z, codes, 0.25, learned_codebook=False), 0.25 * diff.pow(2).mean())


def test_weighted_mean() -> None:
    v = torch.tensor([1.0, 3.0])
    assert L.weighted_mean(v).item() == 2.0
    assert L.weighted_mean(v, torch.tensor([1.0, 0.0])).item() == 1.0


# --- SSIM -----------------------------------------------------------------------------------
def test_ms_ssim_identity_and_monotonic() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 64, generator=g)
    assert torch.allclose(L.ms_ssim(x, x), torch.ones(2), atol=1e-5)
    noise = torch.randn(x.shape, generator=g)
    values = [L.ms_ssim(x, (x + s * noise).clamp(0, 1)).mean().item() for s in (0.02, 0.1, 0.3)]
    assert values[0] > values[1] > values[2] > 0
    y = (x + 0.1 * noise).clamp(0, 1)
    assert torch.allclose(L.ms_ssim(x, y), L.ms_ssim(y, x), atol=1e-6)
    assert torch.allclose(L.ssim(x, y), L.ssim(y, x), atol=1e-6)


def test_ms_ssim_of_flat_images_is_the_luminance_term() -> None:
    # flat images: no contrast, so every cs term is 1 and only the coarsest luminance counts
    a, b = 0.3, 0.6
    x, y = torch.full((1, 3, 128, 128), a), torch.full((1, 3, 128, 128), b)
    c1 = 0.01**2
    lum = (2 * a * b + c1) / (a * a + b * b + c1)
    levels = L.ms_ssim_levels(128)
    w = L.MS_SSIM_WEIGHTS[:levels]
    assert L.ms_ssim(x, y).item() == pytest.approx(lum ** (w[-1] / sum(w)), rel=1e-4)


def test_ms_ssim_levels_follow_image_size() -> None:
    assert L.ms_ssim_levels(256) == 5
    assert L.ms_ssim_levels(128) == 4
    assert L.ms_ssim_levels(32) == 2
    assert L.ms_ssim_levels(8, win=7) == 1


def test_ms_ssim_loss_has_gradient_on_small_crops() -> None:
    x = torch.rand(2, 3, 24, 24) * 2 - 1
    y = (x + 0.2 * torch.randn_like(x)).requires_grad_(True)
    loss = L.MSSSIMLoss()(y, x).mean()
    loss.backward()
    assert 0 < loss.item() < 1 and torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


# --- VGG19 / perceptual -----------------------------------------------------------------------
def write_vgg(path: Path, upto: str = "relu2_2", seed: int = 0) -> Path:
    """A torchvision-format state dict (``features.N.*`` + a classifier entry) for the first layers."""
    torch.manual_seed(seed)
    feats = VGG19Features([upto]).features
    state = {f"features.{k}": v for k, v in feats.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)
    torch.save(state, path)
    return path


def test_vgg_layer_names_follow_torchvision_numbering() -> None:
    names = layer_names()
    assert len(names) == 37
    assert names[:5] == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1"]
    assert names.index("conv3_4") == 16 and names.index("conv5_4") == 34


def test_vgg_loads_torchvision_state_dict(tmp_path: Path) -> None:
    path = write_vgg(tmp_path / "vgg19.pth")
    net = VGG19Features(["conv1_2", "relu2_2"], weights=path)
    saved = torch.load(path, weights_only=True)
    assert torch.equal(net.features[2].weight, saved["features.2.weight"])
    out = net(torch.rand(1, 3, 16, 16))
    assert out["conv1_2"].shape == (1, 64, 16, 16) and out["relu2_2"].shape == (1, 128, 8, 8)
    assert (out["relu2_2"] >= 0).all() and (out["conv1_2"] < 0).any()  # conv taps are pre-ReLU
    assert not any(p.requires_grad for p in net.parameters())
    net.train()
    assert not net.training


def test_vgg_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(VGGWeightsError, match="not found"):
        VGG19Features(["conv1_2"], weights=tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, bad)
    with pytest.raises(VGGWeightsError, match="features"):
        VGG19Features(["conv1_2"], weights=bad)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(VGGWeightsError, match="readable"):
        VGG19Features(["conv1_2"], weights=junk)
    with pytest.raises(OptionError, match="conv9_9"):
        VGG19Features(["conv9_9"])


def test_find_vgg19_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKENSR_VGG19", raising=False)
    monkeypatch.delenv("TOKENSR_METRIC_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    assert find_vgg19() is None
    assert L.build_perceptual("auto") is None
    hub = tmp_path / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    write_vgg(hub / "vgg19-dcbf9e4f.pth")
    assert find_vgg19() == hub / "vgg19-dcbf9e4f.pth"
    other = write_vgg(tmp_path / "mine.pth")
    monkeypatch.setenv("TOKENSR_VGG19", str(other))
    assert find_vgg19() == other
    assert find_vgg19(other) == other


def test_perceptual_loss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_vgg(tmp_path / "vgg19.pth")
    loss = L.PerceptualLoss(path, layers=("conv1_2", "conv2_2"), layer_weights=(0.1, 1.0))
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(loss(x, x), torch.zeros(2))
    y = x.clone().requires_grad_(True)
    d = loss(y, (x + 0.3 * torch.randn_like(x)).clamp(-1, 1))
    assert d.shape == (2,) and (d > 0).all()
    d.sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert L.build_perceptual("none") is None and L.build_perceptual(None) is None
    monkeypatch.delenv("TOKENSR_VGG19", raising=False)
    monkeypatch.delenv("TOKENSR_METRIC_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(OptionError, match="VGG19"):
        L.PerceptualLoss(None)


# --- discriminators --------------------------------------------------------------------------
def test_patch_discriminator_shapes_and_options() -> None:
    x = torch.rand(2, 3, 64, 48) * 2 - 1
    d = NLayerDiscriminator(ndf=8, n_layers=3)
    assert d(x).shape == (2, 1, 6, 4)  # 64 -> 32 -> 16 -> 8 -> 7 -> 6
    sn = NLayerDiscriminator(ndf=8, n_layers=2, norm="none", use_spectral_norm=True)
    assert any("parametrizations" in k for k in sn.state_dict())
    assert sn(x).shape[1] == 1


def test_unet_discriminator_gives_per_pixel_logits() -> None:
    d = UNetDiscriminatorSN(nf=8)
    x = torch.rand(1, 3, 30, 44) * 2 - 1  # not multiples of 8
    assert d(x).shape == (1, 1, 30, 44)


def test_build_discriminator() -> None:
    assert isinstance(build_discriminator({"type": "unet", "nf": 4}), UNetDiscriminatorSN)
    assert isinstance(build_discriminator(None), NLayerDiscriminator)
    with pytest.raises(OptionError, match="type"):
        build_discriminator({"type": "transformer"})
    with pytest.raises(OptionError, match="norm"):
        build_discriminator({"norm": "layer"})


@pytest.mark.parametrize("kind", ["patch", "unet"])
def test_discriminator_features_end_in_its_logits(kind: str) -> None:
    torch.manual_seed(0)
    d = build_discriminator({"type": kind, ("ndf" if kind == "patch" else "nf"): 4}).eval()
    x = torch.rand(2, 3, 40, 32) * 2 - 1
    feats = d.features(x)
    assert len(feats) >= 4
    assert torch.equal(feats[-1], d(x))


def test_feature_matching_loss() -> None:
    torch.manual_seed(0)
    d = NLayerDiscriminator(ndf=4, n_layers=2).eval()
    real = torch.rand(2, 3, 32, 32) * 2 - 1
    fake = (real + 0.3 * torch.randn_like(real)).requires_grad_(True)
    same = L.feature_matching_loss(d.features(real), d.features(real))
    assert same.shape == (2,) and torch.all(same == 0)
    real_feats = d.features(real)
    loss = L.feature_matching_loss(d.features(fake), real_feats)
    assert torch.all(loss > 0)
    # by hand: the mean over hidden layers (logits left out) of the per-sample L1
    fake_feats = d.features(fake)
    hand = sum((f - r).abs().flatten(1).mean(1) for f, r in zip(fake_feats[:-1], real_feats[:-1], strict=False)) / (
        len(fake_feats) - 1
    )
    assert torch.allclose(loss, hand)
    loss.sum().backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        L.feature_matching_loss(fake_feats[:2], real_feats)


def test_local_variance_by_hand() -> None:
    x = torch.zeros(1, 1, 9, 9)
    assert torch.equal(L.local_variance(x, 3), torch.zeros_like(x))
    x[0, 0, 4, 4] = 3.0  # one bright pixel: its 3x3 neighbours see mean 1/3, mean square 1
    v = L.local_variance(x, 3)
    assert float(v[0, 0, 4, 4]) == pytest.approx(1.0 - 1.0 / 9.0, rel=1e-5)
    assert float(v[0, 0, 0, 0]) == 0.0  # far from it


def test_artifact_weights_keep_only_noisy_errors_worse_than_the_reference() -> None:
    """LDL: the weight is zero where the output beats its slow reference, and grows with
    how noisy (locally varying) the output's error is."""
    g = torch.Generator().manual_seed(0)
    target = torch.full((1, 3, 16, 16), 0.5)
    ref = target + 0.05  # a smooth, uniform error everywhere
    out = target.clone()
    out[..., :8] += 0.3 * torch.randn(1, 3, 16, 8, generator=g)  # noisy errors on the left
    w = L.artifact_weights(out, ref, target)
    assert w.shape == (1, 1, 16, 16) and not w.requires_grad
    assert float(w[..., 10:].abs().max()) == 0.0  # right half: out is exact, better than ref
    assert float(w[..., :6].mean()) > 0.0
    # an error the reference makes as well is not an artefact of the model being trained
    smooth = L.artifact_weights(target + 0.3, target + 0.3, target)
    assert float(smooth.max()) == 0.0  # equal to its reference: nothing to suppress


def test_artifact_loss_pulls_artifacts_towards_the_target() -> None:
    g = torch.Generator().manual_seed(1)
    target = torch.rand(2, 3, 16, 16, generator=g)
    ref = target.clone()
    out = (target + 0.3 * torch.randn(target.shape, generator=g)).requires_grad_(True)
    loss = L.artifact_loss(out, ref, target)
    loss.backward()
    assert float(loss.detach()) > 0 and out.grad is not None
    with torch.no_grad():  # a step against the gradient lowers the error where weighted
        stepped = out - 10.0 * out.grad
        assert float(L.artifact_loss(stepped, ref, target)) < float(loss)
