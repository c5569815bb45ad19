"""`tokensr convert` for ITER's released checkpoints (issue #17), proven without the real files.

Fixtures (tests/fixtures/convert/iter/, made by running the authors' network code, chaofengc/ITER
@ 826bcaa, on CPU outside the repository; only numbers and key lists are stored):

- ``ITER_swinvqgan.json``, ``ITER_x4.json``, ``ITER_x2.json``: every key and shape of the released
  files, from the authors' classes at the release configuration (inference_iter.py);
- ``swinvqgan.safetensors``, ``sr.safetensors``: random weights of small networks in the authors'
  layout (values exact in fp16, stored as fp16; the derived Swin buffers and the decoder's
  ``generator.*`` alias are left out for size: the manifests test those);
- ``io.safetensors``: fixed inputs and the authors' outputs for them; ``meta.json``: the small
  configuration and the call behind each output.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tokensr.convert import ConversionError, convert_files
from tokensr.convert.base import StateDict, read_checkpoint
from tokensr.convert.iter import FAMILIES, convert, is_derived, rename_files
from tokensr.methods.iter.model import ITER
from tokensr.methods.iter.sampling import adaptive_refine, start_step_from_count
from tokensr.nn.swin import WindowAttention
from tokensr.nn.vqgan import PRESETS as VQGAN_PRESETS
from tokensr.nn.vqgan import VQGAN

FIX = Path(__file__).parent / "fixtures" / "convert" / "iter"
REPO = Path(__file__).resolve().parents[1]
TOL = 1e-4


def small_states() -> list[StateDict]:
    return [read_checkpoint(FIX / "swinvqgan.safetensors"), read_checkpoint(FIX / "sr.safetensors")]


@pytest.fixture(scope="module")
def small() -> ITER:
    return convert(small_states())


def manifest(name: str) -> dict:
    return json.loads((FIX / f"{name}.json").read_text())


def manifest_state(name: str, device: str = "meta", with_vqgan: bool = False) -> StateDict:
    """A state dict with the keys and shapes of a released file: meta tensors, or random ones on
    ``device``. ``relative_position_index`` gets the values the authors' code stores (the
    converter checks them), ``attn_mask`` zeros (dropped unchecked), and the decoder's
    ``generator.*`` alias shares the decoder's tensors (as torch.save keeps it)."""
    keys = dict(manifest(name)["keys"])
    if with_vqgan:
        keys.update({f"vqgan.{k}": v for k, v in manifest("ITER_swinvqgan")["keys"].items()})
    gen = torch.Generator().manual_seed(0)
    alias = ("generator.", "vqgan.generator.")
    out: StateDict = {}
    for key, shape in keys.items():
        if key.startswith(alias):
            continue  # filled below
        if key.endswith("relative_position_index"):
            out[key] = WindowAttention(8, 1, round(shape[0] ** 0.5)).rel_index.clone()
        elif device == "meta":
            out[key] = torch.empty(shape, device="meta")
        elif key.endswith("attn_mask"):
            out[key] = torch.zeros(shape)
        elif len(shape) == 1 and "norm" in key:
            out[key] = 1.0 + 0.02 * torch.randn(shape, generator=gen)
        else:
            out[key] = 0.02 * torch.randn(shape, generator=gen)
    for key in keys:
        if key.startswith(alias):
            out[key] = out[key.replace("generator.", "decoder.", 1)]
    return out


# --- (a) the small networks reproduce the authors' outputs ----------------------------------------
def test_small_fixture_reproduces_the_authors_outputs(small: ITER) -> None:
    io = load_file(str(FIX / "io.safetensors"))
    assert small.scale == 2 and small.config.token_multiple == 8 and small.config.alpha == 0.7
    assert small.config.start_rule == "reference"
    canvas = torch.where(io["keep"], io["s_t"], torch.full_like(io["s_t"], small.mask_id))
    assert small.refine is not None and small.evaluator is not None
    with torch.no_grad():
        got = {
            "decode_raw": small.tokenizer.decode_indices(io["ids"]),
            "decode01": small.decode_tokens(io["ids"]),
            "encode_prequant": small.tokenizer.encode_continuous(io["hr"] * 2 - 1),
            "lq_logits": small.lq_logits(io["lr"]),
            "refine_logits": small.refine(canvas, io["s_l"], io["good"]),
            "eval_logits": small.evaluator(io["s_t"], io["s_l"]),
        }
        ids = small.tokenizer.tokenize(io["hr"])
    diffs = {k: float((v - io[k]).abs().max()) for k, v in got.items()}
    print("max abs diff vs the authors' code:", {k: f"{v:.1e}" for k, v in diffs.items()})
    assert all(v.shape == io[k].shape for k, v in got.items())
    assert max(diffs.values()) < TOL, diffs
    assert torch.equal(ids, io["encode_ids"])


def test_small_model_saves_and_reloads(small: ITER, tmp_path: Path) -> None:
    small.save_pretrained(tmp_path / "m")
    again = ITER.from_pretrained(str(tmp_path / "m"))
    lr = load_file(str(FIX / "io.safetensors"))["lr"]
    with torch.no_grad():
        assert torch.equal(again.lq_logits(lr), small.lq_logits(lr))
        assert torch.equal(again(lr, steps=2), small(lr, steps=2))


# --- (b) every released tensor has a home of the same shape in the paper preset -------------------
@pytest.mark.parametrize(("file", "scale"), [("ITER_x4", 4), ("ITER_x2", 2)])
@pytest.mark.parametrize("with_vqgan", [False, True])
def test_released_files_map_one_to_one_onto_the_paper_preset(file: str, scale: int, with_vqgan: bool) -> None:
    files = (
        [manifest_state(file, with_vqgan=True)]
        if with_vqgan
        else [manifest_state("ITER_swinvqgan"), manifest_state(file)]
    )
    config, renamed = rename_files(files)
    mapped = {k: tuple(v.shape) for k, v in renamed.items() if not is_derived(k)}
    with torch.device("meta"):
        paper = ITER.from_preset("paper", VQGAN(VQGAN_PRESETS["iter"]), scale=scale)
    params = {k: tuple(p.shape) for k, p in paper.named_parameters()}
    assert config.scale == scale
    assert config.tokenizer == dataclasses.asdict(VQGAN_PRESETS["iter"])
    for part in ("lq_encoder", "refine", "evaluator"):
        assert getattr(config, part) == getattr(paper.config, part), part
    assert set(mapped) == set(params), (sorted(set(mapped) - set(params))[:5], sorted(set(params) - set(mapped))[:5])
    assert all(mapped[k] == params[k] for k in params)
    # the derived buffers left out are the Swin index tables and shift masks, and nothing else
    dropped = {k.rsplit(".", 1)[-1] for k in renamed if is_derived(k)}
    assert dropped == {"relative_position_index", "attn_mask"}


def test_manifest_summary() -> None:
    """Keys and tensor elements per released file (for the report and docs/iter.md)."""
    for name in ("ITER_swinvqgan", "ITER_x4", "ITER_x2"):
        keys = manifest(name)["keys"]
        numel = sum(int(np.prod(s)) for k, s in keys.items() if not is_derived(k) and not k.startswith("generator."))
        print(f"{name}: {len(keys)} keys, {numel / 1e6:.2f} M parameters")
    assert len(manifest("ITER_x4")["keys"]) > 1000


# --- (c) a full-size random checkpoint pair, end to end through the CLI -------------------------
@pytest.mark.slow
def test_full_size_x4_converts_and_upscales_through_the_cli(tmp_path: Path) -> None:
    start = time.perf_counter()
    paths = []
    for name in ("ITER_swinvqgan", "ITER_x4"):
        paths.append(tmp_path / f"{name}.pth")
        torch.save({"params": manifest_state(name, device="cpu")}, paths[-1])
    fam, folder = convert_files([str(p) for p in reversed(paths)], tmp_path / "iter-x4")
    assert fam.name == "iter"
    for p in paths:
        p.unlink()
    converted = time.perf_counter()
    child = resource.getrusage(resource.RUSAGE_CHILDREN)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    cmd = [sys.executable, "-m", "tokensr", "upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png")]
    res = subprocess.run([*cmd, "--weights", str(folder)], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr
    with Image.open(tmp_path / "out.png") as im:
        assert im.size == (64, 64)
    done = time.perf_counter()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - child.ru_utime - child.ru_stime
    print(
        f"full-size x4: write + convert {converted - start:.1f} s; CLI upscale of 16x16: "
        f"{done - converted:.1f} s wall, {cpu:.1f} CPU s"
    )


# --- (d) files that are not (all of) ITER -----------------------------------------------------------
def test_unrelated_file_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    other = tmp_path / "other.pth"
    torch.save({"params": {"conv.weight": torch.zeros(4, 3, 3, 3)}}, other)
    with pytest.raises(ConversionError, match="is not a checkpoint tokensr knows"):
        convert_files([str(other)], tmp_path / "out")
    with pytest.raises(ConversionError, match="not one of ITER's released checkpoints"):
        convert_files([str(other)], tmp_path / "out", family="iter")


def test_a_missing_file_is_named() -> None:
    vq, sr = small_states()
    with pytest.raises(ConversionError, match="needs ITER_x2.pth or ITER_x4.pth"):
        convert([vq])
    with pytest.raises(ConversionError, match="also give ITER_swinvqgan.pth"):
        convert([sr])


def test_a_tensor_without_a_home_is_named() -> None:
    vq, sr = small_states()
    sr["token_refine_net.extra.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError, match=r"1 unexpected keys \(token_refine_net.extra.weight\)"):
        convert([vq, sr])


def test_the_family_recognises_each_released_file() -> None:
    (fam,) = FAMILIES
    assert "CC BY-NC-SA 4.0" in fam.licence and fam.source.startswith("https://github.com/chaofengc/ITER")
    for name in ("ITER_swinvqgan", "ITER_x4", "ITER_x2"):
        assert fam.matches(manifest_state(name))
    assert all(fam.matches(s) for s in small_states())


# --- the released code's start-step rule ------------------------------------------------------------
@pytest.mark.parametrize(("n_good", "paper", "reference"), [(0, 8, 8), (8, 8, 7), (32, 5, 4), (57, 1, 0), (64, 1, 0)])
def test_reference_start_rule(n_good: int, paper: int, reference: int) -> None:
    """T = 8, N = 64: the released code runs step t only if its input mask keeps >= sum(m_s)
    tokens (keep_count(t) = 8 * (8 - t)), and no step when S_l beats keep_count(1) = 56."""
    assert start_step_from_count(n_good, 8, 64) == paper
    assert start_step_from_count(n_good, 8, 64, rule="reference") == reference


def test_no_step_leaves_s_l_as_it_is() -> None:
    lq = torch.randint(0, 16, (1, 8, 8))
    never = lambda *args: pytest.fail("no refinement step should run")  # noqa: E731
    out = adaptive_refine(lq, never, lambda s, cond: torch.ones(s.shape), mask_id=16, start_rule="reference")
    assert torch.equal(out.tokens, lq) and out.start_steps.tolist() == [0]
