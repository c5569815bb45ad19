"""`tokensr convert` for FeMaSR's released checkpoints (issue #17), proven without the real files.

Fixtures (tests/fixtures/convert/femasr/, made by running the authors' network code outside the
repository; only numbers and key lists are stored):

- ``manifest.json``: every key, shape and dtype of FeMaSR_HRP_model_g.pth, FeMaSR_SRX2_model_g.pth
  and FeMaSR_SRX4_model_g.pth, from the authors' FeMaSRNet at the released configurations;
- ``small_{hq,x2,x4}.safetensors``: random weights of a small FeMaSRNet in the authors' layout
  (int8 values with a per-tensor exponent in the metadata; the SR files leave out the codebook
  and decoder, which they copy from the HQ prior, as the released models do);
- ``small_outputs.safetensors``: a fixed input and the authors' outputs for each model.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from tokensr.convert import ConversionError, convert_files, detect
from tokensr.convert.base import StateDict
from tokensr.convert.femasr import FAMILIES, RECOMPUTED, TRAINING_ONLY, convert_hq, convert_sr
from tokensr.methods.femasr.model import FeMaSR
from tokensr.methods.ugtsr.model import PRESETS, UGTSR, UGTSRConfig
from tokensr.methods.ugtsr.prior import FeMaSRPrior

FIX = Path(__file__).parent / "fixtures" / "convert" / "femasr"
REPO = Path(__file__).resolve().parents[1]
SHARED = ("quantize_group.", "after_quant_group.", "decoder_group.", "out_conv.")  # SR files copy these from HQ
HQ_FILE, X2_FILE, X4_FILE = "FeMaSR_HRP_model_g.pth", "FeMaSR_SRX2_model_g.pth", "FeMaSR_SRX4_model_g.pth"
TOL = 1e-4


# --- fixture helpers (also used by test_femasr_method.py) ----------------------------------------
def load_small(name: str) -> StateDict:
    """A small random state dict in the authors' layout: ``hq``, or ``x2`` / ``x4`` with the HQ
    prior's codebook and decoder added (as in the released SR files)."""
    out: StateDict = {}
    with safe_open(str(FIX / f"small_{name}.safetensors"), "pt") as f:
        meta = f.metadata() or {}
        for k in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
            t = f.get_tensor(k)
            out[k] = t.float() / 2 ** int(meta[k]) if k in meta else t
    if name != "hq":
        hq = load_small("hq")
        out.update({k: v for k, v in hq.items() if k.startswith(SHARED)})
    return out


def small_outputs() -> dict[str, torch.Tensor]:
    return load_file(str(FIX / "small_outputs.safetensors"))


def manifest() -> dict[str, dict]:
    return json.loads((FIX / "manifest.json").read_text())["files"]


def manifest_state(file: str, device: str = "meta") -> StateDict:
    """A state dict with the released file's keys and shapes: empty (``meta``), or on the CPU
    zeros with norm scales 1 (cheap to make; the small fixtures check the values' paths)."""
    state: StateDict = {}
    for key, shape, dtype, _is_param in manifest()[file]["tensors"]:
        dt = getattr(torch, dtype)
        if device == "meta":
            state[key] = torch.empty(shape, dtype=dt, device="meta")
        elif len(shape) == 1 and key.endswith("weight"):  # GroupNorm / LayerNorm scales
            state[key] = torch.ones(shape, dtype=dt)
        else:
            state[key] = torch.zeros(shape, dtype=dt)
    return state


def save_checkpoint(state: StateDict, path: Path) -> Path:
    """Write ``state`` as BasicSR does (``{"params": state_dict}``)."""
    torch.save({"params": state}, path)
    return path


# --- recognising the layouts ---------------------------------------------------------------------
@pytest.mark.parametrize(("name", "family"), [("hq", "femasr-hq"), ("x2", "femasr-x2"), ("x4", "femasr-x4")])
def test_each_small_file_matches_exactly_its_family(name: str, family: str) -> None:
    hits = [f.name for f in FAMILIES if f.matches(load_small(name))]
    assert hits == [family]


@pytest.mark.parametrize(("file", "family"), [(HQ_FILE, "femasr-hq"), (X2_FILE, "femasr-x2"), (X4_FILE, "femasr-x4")])
def test_each_released_layout_is_detected(file: str, family: str) -> None:
    assert detect([manifest_state(file)], [file]).name == family


# --- (a) the authors' outputs --------------------------------------------------------------------
def test_hq_prior_reproduces_the_authors_reconstruction() -> None:
    out = small_outputs()
    prior = convert_hq([load_small("hq")])
    with torch.no_grad():
        recon = prior(out["hq_input"]).recon
        tokens = prior.tokenize(out["hq_input"])
    diff = (recon - out["hq_recon"]).abs().max().item()
    assert diff < TOL, diff
    assert torch.equal(tokens, out["hq_indices"][:, 0])


@pytest.mark.parametrize("scale", [4, 2])
def test_sr_model_reproduces_the_authors_output(scale: int) -> None:
    out = small_outputs()
    model = convert_sr([load_small(f"x{scale}")], scale)
    assert isinstance(model, FeMaSR) and model.scale == scale
    with torch.no_grad():
        res = model(out[f"x{scale}_input"])
        padded = model.upscale(out[f"x{scale}_odd_input"])  # the authors' test(): mirror padding, crop
    assert torch.equal(res.indices, out[f"x{scale}_indices"][:, 0])
    diff = (res.image - out[f"x{scale}_output"]).abs().max().item()
    assert diff < TOL, diff
    diff = (padded - out[f"x{scale}_odd_test"].clamp(0, 1)).abs().max().item()
    assert diff < TOL, diff


def test_sr_with_the_hq_file_can_also_tokenize() -> None:
    out = small_outputs()
    model = convert_sr([load_small("x4"), load_small("hq")], 4)
    assert model.tokenizer.config.encoder
    assert torch.equal(model.gt_indices(out["hq_input"]), out["hq_indices"][:, 0])
    alone = convert_sr([load_small("x4")], 4)
    with pytest.raises(ValueError, match="no encoder"):
        alone.gt_indices(out["hq_input"])


def test_sr_refuses_a_second_file_that_is_not_its_prior() -> None:
    with pytest.raises(ConversionError, match="not the FeMaSR HQ prior"):
        convert_sr([load_small("x4"), load_small("x2")], 4)
    other = load_small("hq")
    other["quantize_group.0.embedding.weight"] = other["quantize_group.0.embedding.weight"] + 1
    with pytest.raises(ConversionError, match="codebook differs"):
        convert_sr([load_small("x4"), other], 4)


def test_converted_folder_round_trips(tmp_path: Path) -> None:
    """convert_files on .pth files -> a folder that from_pretrained loads to the same outputs."""
    out = small_outputs()
    sr = save_checkpoint(load_small("x4"), tmp_path / "sr.pth")
    hq = save_checkpoint(load_small("hq"), tmp_path / "hq.pth")
    fam, folder = convert_files([str(sr)], tmp_path / "x4")
    assert fam.name == "femasr-x4" and fam.licence.startswith("CC BY-NC-SA 4.0")
    model = FeMaSR.from_pretrained(folder)
    with torch.no_grad():
        diff = (model(out["x4_input"]).image - out["x4_output"]).abs().max().item()
    assert diff < TOL
    assert "CC BY-NC-SA 4.0" in (folder / "README.md").read_text()
    fam, folder = convert_files([str(hq)], tmp_path / "hq")
    assert fam.name == "femasr-hq"
    assert isinstance(FeMaSRPrior.from_pretrained(folder), FeMaSRPrior)


# --- (b) the released layouts map one to one -----------------------------------------------------
def _left_out(file: str) -> set[str]:
    return {k for k in manifest_state(file) if k.startswith(TRAINING_ONLY) or k.endswith(RECOMPUTED)}


@pytest.mark.parametrize("file", [HQ_FILE, X2_FILE, X4_FILE])
def test_released_layout_converts_with_nothing_left_over(file: str) -> None:
    """Every tensor of the released file has a home of exactly its shape, and every model
    tensor gets one (load_strict raises otherwise); built on the meta device, so it is fast."""
    state = manifest_state(file)
    with torch.device("meta"):
        model = convert_hq([state]) if file == HQ_FILE else convert_sr([state], 4 if file == X4_FILE else 2)
    kept = len(state) - len(_left_out(file))
    own = model.state_dict()
    bookkeeping = [
        k for k in own if k.endswith(("quantizer.cluster_size", "quantizer.embed_sum", "quantizer.initialized"))
    ]
    assert len(own) == kept + len(bookkeeping)
    params = sum(p.numel() for p in model.parameters())
    released = manifest()[file]["n_parameters"]
    if file == HQ_FILE:  # the semantic head and the frozen VGG19 are left out
        dropped = sum(
            np.prod(s) for k, s, _, is_param in manifest()[file]["tensors"] if is_param and k.startswith(TRAINING_ONLY)
        )
        assert params == released - dropped
    else:
        assert params == released


def test_left_out_tensors_are_only_training_and_recomputed_ones() -> None:
    hq = _left_out(HQ_FILE)
    assert {k.split(".")[0] for k in hq} == {"conv_semantic", "vgg_feat_extractor"}
    for file in (X2_FILE, X4_FILE):
        assert all(k.endswith(RECOMPUTED) and ".swin_blks." in k for k in _left_out(file))


@pytest.mark.parametrize(("file", "scale"), [(X4_FILE, 4), (X2_FILE, 2)])
def test_paper_preset_holds_every_released_tensor(file: str, scale: int) -> None:
    """UGTSR's paper preset = FeMaSR + UGTSR's modules: the HQ prior and the SR model fill it
    exactly, and what is left is UGTSR's own (Top-k fusion, Align-Attention, uncertainty head)."""
    with torch.device("meta"):
        prior = convert_hq([manifest_state(HQ_FILE)])
        femasr = convert_sr([manifest_state(file)], scale)
        paper = UGTSR(
            UGTSRConfig(scale=scale, tokenizer=dataclasses.asdict(prior.config), layout="femasr", **PRESETS["paper"])
        )
    filled = {f"tokenizer.{k}": v for k, v in prior.state_dict().items()}
    filled.update({k: v for k, v in femasr.state_dict().items() if not k.startswith("tokenizer.")})
    own = paper.state_dict()
    assert all(tuple(own[k].shape) == tuple(v.shape) for k, v in filled.items() if k in own)
    assert set(filled) <= set(own)
    left = {k.split(".")[0] for k in set(own) - set(filled)}
    assert left == {"fusion", "align", "uncertainty"}


# --- (c) a full-size x4 checkpoint, end to end through the CLI -----------------------------------
@pytest.mark.slow
def test_full_size_x4_converts_and_upscales_through_the_cli(tmp_path: Path) -> None:
    """A random checkpoint of the released x4 layout (35 M parameters) -> folder -> a 4x4 image
    upscaled by `python -m tokensr upscale IN -o OUT --weights FOLDER` (the method is read
    from the folder). Slow: writes, reads and converts 140 MB."""
    ckpt = save_checkpoint(manifest_state(X4_FILE, device="cpu"), tmp_path / X4_FILE)
    start = time.perf_counter()
    fam, folder = convert_files([str(ckpt)], tmp_path / "femasr-x4")
    converted = time.perf_counter()
    assert fam.name == "femasr-x4"
    ckpt.unlink()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    cmd = [sys.executable, "-m", "tokensr", "upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png")]
    res = subprocess.run([*cmd, "--weights", str(folder)], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr
    with Image.open(tmp_path / "out.png") as im:
        assert im.size == (16, 16)
    done = time.perf_counter()
    print(f"full-size x4: convert {converted - start:.1f} s, CLI upscale of a 4x4 image {done - converted:.1f} s")


# --- (e) files that are not FeMaSR -----------------------------------------------------------------
def test_unrelated_file_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    other = save_checkpoint({"conv.weight": torch.zeros(4, 3, 3, 3), "conv.bias": torch.zeros(4)}, tmp_path / "x.pth")
    with pytest.raises(ConversionError, match="is not a checkpoint tokensr knows"):
        convert_files([str(other)], tmp_path / "out")
    with pytest.raises(ConversionError, match="not a FeMaSR x4 SR checkpoint"):
        convert_files([str(other)], tmp_path / "out", family="femasr-x4")
    hq = save_checkpoint(load_small("hq"), tmp_path / "hq.pth")
    with pytest.raises(ConversionError, match="not a FeMaSR x2 SR checkpoint"):
        convert_files([str(hq)], tmp_path / "out", family="femasr-x2")


def test_a_tensor_without_a_home_is_named() -> None:
    state = load_small("x4")
    state["multiscale_encoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError, match=r"1 tensors tokensr does not know \(multiscale_encoder.extra.weight\)"):
        convert_sr([state], 4)
