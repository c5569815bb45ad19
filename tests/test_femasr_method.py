"""`tokensr upscale --method femasr` (issue #17) and UGTSR's paper preset on a FeMaSR prior.

The weights are the small random FeMaSR models of tests/fixtures/convert/femasr/, converted with
`tokensr convert` (see tests/test_convert_femasr.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_convert_femasr import load_small, save_checkpoint, small_outputs

from tokensr.cli import main
from tokensr.convert import convert_files
from tokensr.errors import OptionError
from tokensr.methods import build_method
from tokensr.methods.femasr.method import AUTO_TILE, WHOLE_IMAGE_PIXELS, FeMaSRMethod
from tokensr.methods.femasr.model import FEMASR_SWITCHES, FeMaSR, femasr_config, mirror_pad
from tokensr.methods.ugtsr.model import UGTSR, UGTSRConfig
from tokensr.methods.ugtsr.prior import FeMaSRPrior, PriorConfig
from tokensr.nn.vqgan import VQGAN, VQGANConfig


@pytest.fixture(scope="module")
def x4_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("femasr")
    _, folder = convert_files([str(save_checkpoint(load_small("x4"), tmp / "sr.pth"))], tmp / "femasr-x4")
    return folder


@pytest.fixture(scope="module")
def hq_prior() -> FeMaSRPrior:
    from tokensr.convert.femasr import convert_hq

    prior = convert_hq([load_small("hq")])
    assert isinstance(prior, FeMaSRPrior)
    return prior


# --- (d) no weights -------------------------------------------------------------------------------
def test_femasr_without_weights_is_one_clear_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    Image.new("RGB", (4, 4)).save(tmp_path / "in.png")
    code = main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--method", "femasr"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and "femasr needs weights" in err[0] and "tokensr convert" in err[0], err
    with pytest.raises(OptionError, match="femasr needs weights"):
        build_method("femasr", scale=2)


# --- the method -------------------------------------------------------------------------------------
def test_method_runs_a_converted_folder(x4_folder: Path) -> None:
    out = small_outputs()
    method = build_method("femasr", scale=4, weights=str(x4_folder))
    assert isinstance(method, FeMaSRMethod) and method.scale == 4
    sr = method(out["x4_odd_input"])
    assert (sr - out["x4_odd_test"].clamp(0, 1)).abs().max().item() < 1e-4


def test_cli_upscales_with_a_converted_folder(x4_folder: Path, tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "in.png")
    for extra in ([], ["--method", "femasr"]):
        out = tmp_path / f"out{len(extra)}.png"
        assert main(["upscale", str(tmp_path / "in.png"), "-o", str(out), "--weights", str(x4_folder), *extra]) == 0
        with Image.open(out) as im:
            assert im.size == (28, 20)


def test_method_refuses_other_models_scales_and_options(x4_folder: Path) -> None:
    with pytest.raises(OptionError, match="is x4, not x2"):
        build_method("femasr", scale=2, weights=str(x4_folder))
    with pytest.raises(OptionError, match="does not take the option"):
        build_method("femasr", scale=4, weights=str(x4_folder), top_k=3)
    with pytest.raises(OptionError, match="not 'femasr'"):
        build_method("femasr", scale=4, weights="ugtsr-small-x4")


def test_large_images_are_tiled_as_the_authors(x4_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tokensr.methods.femasr.method as femasr_method

    method = build_method("femasr", scale=4, weights=str(x4_folder))
    assert method.tile == AUTO_TILE and WHOLE_IMAGE_PIXELS == 600 * 600
    small_tiles = FeMaSRMethod(method.model, tile=16, tile_overlap=4)
    lr = torch.rand(1, 3, 20, 24)
    whole = small_tiles(lr)  # below the whole-image limit: one pass
    assert torch.equal(whole, method.model.upscale(lr))
    monkeypatch.setattr(femasr_method, "WHOLE_IMAGE_PIXELS", 100)  # now it is tiled
    tiled = small_tiles(lr)
    assert tiled.shape == (1, 3, 80, 96) and not torch.equal(tiled, whole)


# --- the model ----------------------------------------------------------------------------------------
def test_mirror_pad_is_the_authors_flip_and_cat() -> None:
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).view(2, 3, 5, 6)
    ref = torch.cat([x, torch.flip(x, [2])], 2)[:, :, :8, :]
    ref = torch.cat([ref, torch.flip(ref, [3])], 3)[:, :, :, :10]
    assert torch.equal(mirror_pad(x, 3, 4), ref)
    assert mirror_pad(x, 12, 0).shape[-2] == 17  # larger than the image: mirrored again


def test_femasr_config_is_ugtsr_with_its_modules_off() -> None:
    cfg = femasr_config(4, PriorConfig())
    assert cfg.layout == "femasr" and all(getattr(cfg, k) == v for k, v in FEMASR_SWITCHES.items())
    with torch.device("meta"):
        model = FeMaSR(cfg)
    assert model.fusion is None and model.uncertainty is None and len(model.align) == 0
    assert model.fusion_stages == (1, 2) and model.authors_pad_multiple == 16
    with pytest.raises(ValueError, match="top_k=1"):
        FeMaSR(UGTSRConfig(**{**vars(cfg), "top_k": 3}))


def test_default_ugtsr_config_keeps_the_tokensr_layout() -> None:
    cfg = UGTSRConfig()
    assert cfg.layout == "tokensr" and cfg.swin_mlp_ratio == 2.0


# --- UGTSR's paper preset on a converted FeMaSR prior ---------------------------------------------
PAPER_SMALL = dict(
    swin_dim=32, swin_groups=1, swin_depth=2, swin_heads=2, swin_window=4,
    fusion_dim=16, fusion_heads=2, align_dim=16, align_heads=2, align_window=4, uncertainty_hidden=8,
)  # fmt: skip


def test_paper_preset_starts_from_a_converted_prior(hq_prior: FeMaSRPrior) -> None:
    model = UGTSR.create(hq_prior, scale=4, preset="paper", **PAPER_SMALL)
    assert model.config.layout == "femasr" and model.config.top_k == 3 and model.config.align_attention
    assert torch.equal(model.codebook, hq_prior.quantizer.codebook)
    out = model(torch.rand(1, 3, 16, 16), with_uncertainty=True)
    assert out.image.shape == (1, 3, 64, 64) and out.uncertainty is not None
    assert out.candidates.shape == (1, 3, 8, 8)
    assert torch.equal(model.gt_indices(small_outputs()["hq_input"]), small_outputs()["hq_indices"][:, 0])


def test_the_layout_follows_the_tokenizer() -> None:
    vq = VQGAN(VQGANConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, code_dim=8, codebook_size=16))
    assert UGTSR.create(vq, scale=2, preset="tiny").config.layout == "tokensr"
    with pytest.raises(ValueError, match="does not fit a VQGAN tokenizer"):
        UGTSR.create(vq, scale=2, preset="tiny", layout="femasr")
