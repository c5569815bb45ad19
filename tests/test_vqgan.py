"""The VQGAN tokenizer: shapes (square and not), straight-through gradients, save/load, and
the training task's model building (presets, overrides, init)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from tokensr.errors import OptionError
from tokensr.nn import losses as L
from tokensr.nn.blocks import ResnetBlock, Upsample
from tokensr.nn.quantizer import NEAREST_ROWS
from tokensr.nn.vqgan import PRESETS, VQGAN, VQGANConfig
from tokensr.train.tasks.vqgan import VQGANTask, model_config

TINY = VQGANConfig(ch=8, ch_mult=(1, 2), num_res_blocks=1, mid_attention=False, code_dim=8, codebook_size=16)
TINY_F4_ATTN = VQGANConfig(
    ch=8,
    ch_mult=(1, 2, 2),
    num_res_blocks=1,
    attn_levels=(2,),
    mid_attention=True,
    code_dim=4,
    codebook_size=8,
    ema=False,
)


@pytest.mark.parametrize("cfg", [TINY, TINY_F4_ATTN], ids=["f2", "f4-attn-legacy"])
@pytest.mark.parametrize("size", [(32, 32), (24, 40)], ids=["square", "wide"])
def test_shapes(cfg: VQGANConfig, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = VQGAN(cfg).train()
    h, w = size
    f = cfg.factor
    x = torch.rand(2, 3, h, w) * 2 - 1
    out = model(x)
    assert out.recon.shape == x.shape
    assert out.quant.indices.shape == (2, h // f, w // f)
    assert out.quant.z_q.shape == (2, cfg.code_dim, h // f, w // f)
    assert model.encode_continuous(x).shape == (2, cfg.code_dim, h // f, w // f)
    assert model.decode_indices(out.quant.indices).shape == x.shape
    assert model.last_layer is model.decoder.conv_out.weight
    model.eval()
    assert model.tokenize((x + 1) / 2).shape == (2, h // f, w // f)


def test_reconstruct_pads_sizes_that_are_not_multiples_of_f() -> None:
    torch.manual_seed(0)
    model = VQGAN(TINY_F4_ATTN).eval()
    img = torch.rand(1, 3, 13, 21)
    rec = model.reconstruct(img)
    assert rec.shape == img.shape
    assert rec.min() >= 0 and rec.max() <= 1


def test_preset_factors() -> None:
    assert PRESETS["paper"].factor == 8 and PRESETS["paper"].codebook_size == 512
    assert PRESETS["small"].factor == 4


def test_straight_through_gradient_reaches_encoder() -> None:
    torch.manual_seed(0)
    model = VQGAN(TINY).train()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = model.encode_continuous(x)
    z.retain_grad()
    q = model.quantizer(z)
    q.z_q.retain_grad()
    rec = model.decode(q.z_q)
    (rec - x).abs().mean().backward()  # reconstruction only: no commitment term
    # the decoder's gradient at the codes passes unchanged to the encoder output
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert torch.equal(z.grad, q.z_q.grad)
    assert model.encoder.conv_in.weight.grad is not None
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert model.quant_conv.weight.grad.abs().sum() > 0
    assert model.quantizer.embedding.weight.grad is None  # EMA codebook


def test_save_and_load_roundtrip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = VQGAN(TINY).train()
    model(torch.rand(2, 3, 16, 16) * 2 - 1)  # initialise the EMA codebook
    model.eval()
    model.save_pretrained(tmp_path / "vq")
    loaded = VQGAN.from_pretrained(tmp_path / "vq")
    assert loaded.config == model.config
    x = torch.rand(1, 3, 16, 24)
    assert torch.equal(loaded.reconstruct(x), model.reconstruct(x))


def test_model_config_from_preset_and_overrides() -> None:
    cfg = model_config({"preset": "small", "ch": 16, "ch_mult": [1, 2]})
    assert cfg.ch == 16 and cfg.ch_mult == (1, 2) and cfg.codebook_size == PRESETS["small"].codebook_size
    with pytest.raises(OptionError, match="codebook_sise"):
        model_config({"codebook_sise": 3})
    with pytest.raises(OptionError, match="preset"):
        model_config({"preset": "huge"})


def test_task_init_loads_strictly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = VQGAN(TINY).train()
    src(torch.rand(2, 3, 16, 16) * 2 - 1)
    src.save_pretrained(tmp_path / "boot")
    task = VQGANTask({"init": str(tmp_path / "boot"), "losses": {"gan": 0}}, torch.device("cpu"))
    own = task.model.state_dict()
    for k, v in src.state_dict().items():
        assert torch.equal(own[k], v), k
    assert set(task.modules()) == {"vqgan"}  # no discriminator with gan: 0
    # a model section whose sizes disagree with the folder's weights is refused
    tiny = {"preset": "small", "ch": 8, "ch_mult": [1, 2], "num_res_blocks": 1, "mid_attention": False, "code_dim": 8}
    with pytest.raises(OptionError, match="do not fit the model section"):
        VQGANTask({"init": str(tmp_path / "boot"), "model": {**tiny, "codebook_size": 32}}, "cpu")
    # one that only changes weight-free options takes the weights into its own architecture
    task = VQGANTask(
        {
            "init": str(tmp_path / "boot"),
            "losses": {"gan": 0},
            "model": {**tiny, "codebook_size": 16, "min_group_channels": 4},
        },
        "cpu",
    )
    assert task.model.config.min_group_channels == 4 and task.model.encoder.norm_out.num_groups == 4
    assert all(torch.equal(task.model.state_dict()[k], v) for k, v in src.state_dict().items())
    # a weight file missing a tensor fails (strict), it is not silently half-loaded
    from safetensors.torch import load_file, save_file

    state = load_file(str(tmp_path / "boot" / "model.safetensors"))
    state.pop("decoder.conv_out.weight")
    save_file(state, str(tmp_path / "boot" / "model.safetensors"))
    with pytest.raises(OptionError, match="conv_out"):
        VQGANTask({"init": str(tmp_path / "boot")}, "cpu")


def test_group_norm_keeps_enough_channels_per_group() -> None:
    from tokensr.nn.blocks import group_norm

    assert group_norm(128).num_groups == 32 and group_norm(32).num_groups == 32  # taming's GN32
    assert group_norm(32, min_group_channels=8).num_groups == 4
    assert group_norm(24, min_group_channels=8).num_groups == 3
    assert group_norm(4, min_group_channels=8).num_groups == 1
    small = VQGAN(PRESETS["small"])  # 32-channel full-resolution layers: 4 groups of 8, not InstanceNorm
    assert small.decoder.norm_out.num_groups == 4 and small.encoder.norm_out.num_groups == 16
    # a global colour cast reaches the output through the normalised layers (it would not
    # under InstanceNorm, which removes each channel's mean)
    torch.manual_seed(0)
    cfg = VQGANConfig(ch=8, ch_mult=(1,), num_res_blocks=1, mid_attention=False, code_dim=4, codebook_size=8)
    norm = VQGAN(VQGANConfig(**{**cfg.__dict__, "min_group_channels": 4})).decoder.norm_out
    inst = VQGAN(cfg).decoder.norm_out
    x = torch.randn(1, 8, 6, 6)
    shifted = x + torch.linspace(-1, 1, 8).view(1, 8, 1, 1)  # per-channel offsets
    assert torch.allclose(inst(x), inst(shifted), atol=1e-4)
    assert not torch.allclose(norm(x), norm(shifted), atol=1e-2)


def test_task_rejects_unknown_keys() -> None:
    with pytest.raises(OptionError, match="lossses"):
        VQGANTask({"model": {"preset": "small"}, "lossses": {}}, "cpu")
    with pytest.raises(OptionError, match="disc_strat"):
        VQGANTask({"model": {"preset": "small"}, "losses": {"disc_strat": 3}}, "cpu")


def test_decoder_only_training_keeps_the_tokens(tmp_path: Path) -> None:
    """trainable: decoder moves the decoder (GAN + feature matching on) but leaves the encoder,
    the EMA codebook and so every image's tokens exactly as they were."""
    torch.manual_seed(0)
    src = VQGAN(TINY).train()
    src(torch.rand(2, 3, 16, 16) * 2 - 1)  # initialise the EMA codebook
    src.save_pretrained(tmp_path / "boot")
    task = VQGANTask(
        {
            "init": str(tmp_path / "boot"),
            "trainable": "decoder",
            "losses": {"gan": 0.8, "feature_matching": 1.0, "disc_start": 0, "codebook": 0.0},
            "discriminator": {"type": "patch", "ndf": 4, "n_layers": 2},
        },
        "cpu",
    )
    groups = task.param_groups()
    g_params = {id(p) for p in groups["g"]}
    assert g_params == {id(p) for m in (task.model.decoder, task.model.post_quant_conv) for p in m.parameters()}
    x = torch.rand(2, 3, 16, 16)
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    tokens = src.eval().tokenize(x)
    opt = torch.optim.Adam(groups["g"], lr=1e-2)
    task.model.train()
    losses, logs = task.losses({"hr": x}, step=0)
    assert {"g", "d"} <= set(losses) and logs["feature_matching"] > 0
    losses["g"].backward()
    opt.step()
    after = task.model.state_dict()
    frozen = [k for k in before if not k.startswith(("decoder.", "post_quant_conv."))]
    assert any(k.startswith("quantizer.") for k in frozen)
    for k in frozen:
        assert torch.equal(after[k], before[k]), k
    assert any(not torch.equal(after[k], before[k]) for k in before if k.startswith("decoder."))
    assert torch.equal(task.model.eval().tokenize(x), tokens)
    with pytest.raises(OptionError, match="trainable"):
        VQGANTask({"init": str(tmp_path / "boot"), "trainable": "encoder"}, "cpu")


@pytest.mark.parametrize("unit_range", [False, True])
def test_task_trains_in_the_models_own_image_range(tmp_path: Path, unit_range: bool) -> None:
    """A unit_range VQGAN (the paper RealSRT tokenizer takes [0, 1]) is fed and scored in [0, 1]:
    the task's L1 equals the mean |x - from_net(reconstruction)| and its PSNR agrees with it."""
    torch.manual_seed(0)
    src = VQGAN(dataclasses.replace(TINY, unit_range=unit_range)).train()
    src(src.to_net(torch.rand(2, 3, 16, 16)))
    src.save_pretrained(tmp_path / "boot")
    task = VQGANTask({"init": str(tmp_path / "boot"), "losses": {"gan": 0, "l1": 1.0, "l2": 0.0}}, "cpu")
    task.model.eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        _, logs = task.losses({"hr": x}, step=0)
        rec01 = task.model.from_net(task.model(task.model.to_net(x)).recon)
    scale = 1.0 if unit_range else 2.0  # the L1 is taken in the network's range
    assert logs["l1"] == pytest.approx(scale * float((rec01 - x).abs().mean()), rel=1e-4)
    assert logs["psnr"] == pytest.approx(L.psnr(rec01, x), abs=1e-3)


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels-last"])
def test_inference_blocks_match_their_autograd_form(channels_last: bool) -> None:
    """Without autograd Upsample runs four folded 2x2 convolutions and ResnetBlock works in
    place; both must give what the plain (training) form gives, in any memory format."""
    torch.manual_seed(0)
    up, block = Upsample(6), ResnetBlock(6, 4, min_group_channels=2)
    x = torch.randn(2, 6, 5, 7)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        up.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        block.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    x_before = x.clone()
    ref_up = up.conv(torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))
    ref_block = block(x)  # grad enabled: the plain form
    assert ref_block.requires_grad
    with torch.no_grad():
        fast_up, fast_block = up(x), block(x)
    assert fast_up.shape == (2, 6, 10, 14)
    torch.testing.assert_close(fast_up, ref_up.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_block, ref_block.detach(), atol=1e-6, rtol=1e-6)
    assert torch.equal(x, x_before)  # the in-place block leaves its input alone
    assert fast_up.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_decoder_output_is_the_same_with_and_without_autograd() -> None:
    torch.manual_seed(0)
    model = VQGAN(TINY).eval()
    z = torch.randn(1, TINY.code_dim, 6, 5)
    with torch.no_grad():
        fast = model.decoder(z)
    torch.testing.assert_close(fast, model.decoder(z).detach(), atol=1e-5, rtol=1e-5)


def test_nearest_code_search_is_float32_under_bf16_autocast() -> None:
    """Distances rounded to bf16 pick other codes among close ones; ``nearest`` (which works
    in blocks of rows) must not: it gives the same codes with and without autocast, and the
    float64 nearest codes but for float32 rounding on these deliberately close codes."""
    torch.manual_seed(0)
    model = VQGAN(dataclasses.replace(TINY, codebook_size=256, code_dim=8)).eval()
    codes = model.quantizer.codebook
    with torch.no_grad():
        codes.copy_(torch.randn_like(codes) * 0.05 + 3.0)  # close codes far from the origin
    n = 2 * NEAREST_ROWS + 37  # several blocks of rows and a remainder
    flat = codes[torch.randint(0, 256, (n,))] + torch.randn(n, 8) * 0.03
    exact = ((flat.double()[:, None] - codes.double()[None]) ** 2).sum(-1).argmin(1)
    naive = (flat.pow(2).sum(1, keepdim=True) - 2 * (flat.bfloat16() @ codes.t().bfloat16()).float()).add(
        codes.pow(2).sum(1)
    )
    assert (naive.argmin(1) != exact).float().mean() > 0.05  # the case really is sensitive to bf16
    plain = model.quantizer.nearest(flat)
    assert (plain != exact).float().mean() < 0.005
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model.quantizer.nearest(flat), plain)


def test_tokenize_exact_or_under_the_callers_autocast() -> None:
    """exact=True: float32 tokens under any autocast; exact=False: the encoder's convolutions
    run in bf16 under a bf16 autocast (and the same as exact without one)."""
    torch.manual_seed(0)
    model = VQGAN(TINY).eval()
    x = torch.rand(1, 3, 32, 32)
    ref = model.tokenize(x)
    assert torch.equal(model.tokenize(x, exact=False), ref)
    seen: list[torch.dtype] = []
    model.encoder.conv_in.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        exact = model.tokenize(x)
        fast = model.tokenize(x, exact=False)
    assert torch.equal(exact, ref)
    assert seen[-2:] == [torch.float32, torch.bfloat16]
    assert fast.shape == ref.shape and fast.dtype == torch.long
    assert (fast == ref).float().mean() > 0.5  # bf16 moves a few near ties, not the map


def test_folded_upsample_under_bf16_autocast() -> None:
    """The folded upsampling keeps its bias under bf16 autocast (bf16 output, float32 bias)."""
    torch.manual_seed(0)
    up = Upsample(4)
    with torch.no_grad():
        up.conv.bias.fill_(0.5)
    x = torch.randn(1, 4, 6, 5)
    ref = up.conv(torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")).detach()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast = up(x)
    assert fast.dtype == torch.bfloat16 and fast.shape == (1, 4, 12, 10)
    torch.testing.assert_close(fast.float(), ref, atol=0.05, rtol=0.02)
