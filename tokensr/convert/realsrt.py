"""Converter for the authors' released RealSRT checkpoint (USTC-JialunPeng/RealSRT, MIT).

The release is one BasicSR checkpoint (``net_g_80000.pth``, weights under ``params_ema``) of
their ``RealSRT(use_critic=True, use_ccm=True)``, which nests every sub-model:

- ``vae.*``: the VQGAN tokenizer (``encoder.model.<i>`` and ``decoder.model.<i>`` are flat
  ``nn.Sequential`` lists; ``quantizer.codebooks.0``: an EMA codebook with one extra padding row);
- ``generator.*`` and ``critic.*``: the token transformers (``enc_*``: the LR stream,
  ``dec_*``: the HR stream, each with its own copy of the codebook as ``token_emb`` plus a row
  for the mask id, and a stored sin-cos table ``pos_emb``);
- ``trainable_copy_encoder.*``, ``fuse_res1/fuse_attn/fuse_res2.*``, ``zero_out.*``: the CCM.

``tokensr convert net_g_80000.pth -o FOLDER`` gives one :class:`RealSRT` folder at the ``paper``
preset. Several files may be given (e.g. a stage checkpoint and a bare VQGAN file, whose keys get
the ``vae.`` prefix): they are merged in command-line order, a later file's tensors replacing an
earlier one's. A model without ``critic.*`` or CCM keys converts without that part.

The sizes are read from the tensors (so a file at other sizes with the authors' layout converts
too). Names change; five kinds of tensors change form, all exactly:

- the codebook's padding row and each transformer's mask-id embedding row are dropped: neither
  ever reaches an output (codes are searched among the first K rows; the mask token replaces
  the mask id's embedding, and the critic never sees the mask id);
- ``pos_emb`` is checked against tokensr's sin-cos table (column half first) and dropped:
  tokensr computes it, for any grid;
- the generator's ``mask_token`` ``[1, 1, dim]`` becomes ``[dim]``;
- the two halves of each GEGLU input projection swap places (theirs computes ``gate * gelu(x)``
  with ``x`` the first half, tokensr ``h * gelu(gate)`` with ``gate`` the second half);
- the CCM attention's separate ``q``, ``k``, ``v`` 1x1 convs are stacked into one ``qkv`` conv.

The tokensr quantizer's ``initialized`` flag has no counterpart and is set (the codebook is trained).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import torch

from tokensr.convert.base import ConversionError, Family, StateDict, list_indices, load_strict
from tokensr.methods.realsrt.model import RealSRT, RealSRTConfig
from tokensr.nn.transformer import sincos_2d
from tokensr.nn.vqgan import VQGANConfig
from tokensr.pretrained import config_from_dict

SOURCE = "https://github.com/USTC-JialunPeng/RealSRT (net_g_80000.pth on Google Drive, linked from the README)"
TITLE = (
    "RealSRT: Confidence-Based Iterative Generation for Real-World Image Super-Resolution "
    "(Peng, Luo, Fu, Liu; ECCV 2024)"
)
LICENCE = "MIT"
FILES = "net_g_80000.pth (optionally with stage checkpoints or a bare VQGAN file)"

SCALE = 4  # their model upsamples the LR image x4 before tokenising it (fixed in their code)
# The authors' inference (inference_realsrt.py), saved as the converted model's defaults: LR
# patches with half overlap blended by Gaussian weights, AdaIN towards each LR patch, and
# int() (floor) re-mask counts. T = 4 and the stride (half the patch) are tokensr's defaults too.
AUTHORS_INFERENCE = {"aggregate": "pixels", "color_fix": "adain", "rounding": "floor"}
TOKENIZER = "tokenizer."
POS_TOLERANCE = 1e-5  # their table is computed in float64 and stored in float32, like tokensr's

# The authors' residual block is a Sequential (GN, swish, conv, GN, swish, conv) plus an
# optional 1x1 ``channel_up``; GroupNorms are wrapped (``.gn``).
_RES = (
    ("block.0.gn.", "norm1."),
    ("block.2.", "conv1."),
    ("block.3.gn.", "norm2."),
    ("block.5.", "conv2."),
    ("channel_up.", "skip."),
)
_GN = (("gn.", ""),)
_PLAIN = (("", ""),)
_LAYER_NORM = (("gamma", "weight"), ("beta", "bias"))

# (their module prefix, tokensr module prefix, (their name start, tokensr name start) pairs)
Rule = tuple[str, str, tuple[tuple[str, str], ...]]


# --- reading the layout ----------------------------------------------------------------------
def _kind(state: Mapping[str, torch.Tensor], p: str) -> str:
    """What module ``p`` of the authors' encoder/decoder Sequential is: res, gn, resample or conv."""
    if f"{p}block.0.gn.weight" in state:
        return "res"
    if f"{p}gn.weight" in state:
        return "gn"
    if f"{p}conv.weight" in state:
        return "resample"
    if f"{p}weight" in state:
        return "conv"
    raise ConversionError(f"unknown module at {p} (expected the RealSRT VQGAN layout)")


def _sequence(state: Mapping[str, torch.Tensor], prefix: str) -> list[tuple[int, str]]:
    """(index, kind) of every module with weights in the Sequential ``{prefix}model.``."""
    return [(i, _kind(state, f"{prefix}model.{i}.")) for i in list_indices(state, f"{prefix}model.")]


def _runs(kinds: list[str]) -> list[int]:
    """Lengths of the runs of residual blocks between resampling layers."""
    runs, n = [], 0
    for k in kinds:
        if k == "res":
            n += 1
        elif k == "resample":
            runs.append(n)
            n = 0
    return [*runs, n]


def _need(state: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise ConversionError(f"the checkpoint has no '{key}' (not a complete RealSRT model)")
    return state[key]


def tokenizer_config(state: Mapping[str, torch.Tensor], prefix: str = "vae.") -> VQGANConfig:
    """The VQGAN config of the authors' tokenizer, read from the tensor shapes."""
    if f"{prefix}quantizer.codebooks.1.weight" in state:
        raise ConversionError("residual quantization with more than one codebook is not supported")
    rows, code_dim = _need(state, f"{prefix}quantizer.codebooks.0.weight").shape
    enc = [k for _, k in _sequence(state, f"{prefix}encoder.")]
    runs = _runs(enc[1:-2])  # between conv_in and (GN, conv_out); swish has no weights
    if enc[:1] != ["conv"] or enc[-2:] != ["gn", "conv"] or len(runs) < 2 or runs[-1] < 2:
        raise ConversionError(f"the encoder of '{prefix}' does not have the RealSRT layout ({', '.join(enc)})")
    levels, num_res = len(runs), runs[0]
    if runs[:-1] != [num_res] * (levels - 1) or runs[-1] != num_res + 2:
        raise ConversionError(f"the encoder's blocks per level differ ({runs}); expected {num_res} per level + 2")
    dec_runs = _runs([k for _, k in _sequence(state, f"{prefix}decoder.")][1:-2])
    dec_res = dec_runs[-1]
    if len(dec_runs) != levels or dec_runs[1:-1] != [dec_res] * (levels - 2) or dec_runs[0] != dec_res + 2:
        raise ConversionError(f"the decoder's blocks per level ({dec_runs}) do not match the encoder's")
    ch = int(_need(state, f"{prefix}encoder.model.0.weight").shape[0])
    widths = _level_widths(state, f"{prefix}encoder.", levels)
    if any(w % ch for w in widths):
        raise ConversionError(f"encoder widths {widths} are not multiples of the first width {ch}")
    return VQGANConfig(
        ch=ch,
        ch_mult=tuple(w // ch for w in widths),
        num_res_blocks=num_res,
        attn_levels=(),
        mid_attention=False,
        code_dim=int(code_dim),
        codebook_size=int(rows) - 1,
        decoder_res_blocks=dec_res,
        unit_range=True,
    )


def _level_widths(state: Mapping[str, torch.Tensor], prefix: str, levels: int) -> list[int]:
    """Output channels of the last residual block of each encoder level."""
    widths, last = [], 0
    for i, kind in _sequence(state, prefix):
        if kind == "res":
            last = int(state[f"{prefix}model.{i}.block.5.weight"].shape[0])
        elif kind == "resample":
            widths.append(last)
    return [*widths, last][:levels]


def transformer_config(state: Mapping[str, torch.Tensor], prefix: str) -> tuple[dict[str, object], int]:
    """The transformer settings under ``prefix`` (``generator.``/``critic.``) and its grid side."""
    dim = int(_need(state, f"{prefix}enc_in.weight").shape[0])
    _, heads, _, dim_head = _need(state, f"{prefix}enc_blocks.0.0.null_kv").shape
    inner = int(_need(state, f"{prefix}enc_blocks.0.1.1.weight").shape[0]) // 2
    ff_mult = round(inner * 3 / (2 * dim) * 4) / 4  # theirs: inner = int(dim * mult * 2 / 3)
    if int(dim * ff_mult * 2 / 3) != inner:
        raise ConversionError(f"{prefix} feed-forward width {inner} is not int(dim * mult * 2 / 3) for a quarter mult")
    n_pos = int(_need(state, f"{prefix}pos_emb").shape[1])
    side = math.isqrt(n_pos)
    if side * side != n_pos:
        raise ConversionError(f"{prefix}pos_emb has {n_pos} positions, not a square grid")
    settings: dict[str, object] = dict(
        dim=dim,
        heads=int(heads),
        dim_head=int(dim_head),
        lr_depth=len(list_indices(state, f"{prefix}enc_blocks.")),
        hr_depth=len(list_indices(state, f"{prefix}dec_blocks.")),
        ff_mult=ff_mult,
        pos_cols_first=True,
    )
    return settings, side


def model_config(state: Mapping[str, torch.Tensor]) -> RealSRTConfig:
    """The tokensr config of an authors' state dict (critic and CCM when their keys are there)."""
    tok = tokenizer_config(state)
    generator, side = transformer_config(state, "generator.")
    if (side * tok.factor) % SCALE:
        raise ConversionError(f"a {side}x{side} token grid at f={tok.factor} is not an LR patch at x{SCALE}")
    critic = transformer_config(state, "critic.")[0] if "critic.enc_in.weight" in state else None
    return RealSRTConfig(
        scale=SCALE,
        lr_patch=side * tok.factor // SCALE,
        lr_input="tokens",
        clamp_lr_up=False,
        tokenizer=dataclasses.asdict(tok),
        generator=generator,
        critic=critic,
        ccm={"attention": True} if "zero_out.weight" in state else None,
        defaults=dict(AUTHORS_INFERENCE),
    )


# --- renaming ----------------------------------------------------------------------------------
def _vqgan_modules(state: Mapping[str, torch.Tensor], src: str, dst: str, cfg: VQGANConfig, part: str) -> list[Rule]:
    """(their prefix, tokensr prefix, renames) of each module of an encoder or decoder Sequential."""
    levels = len(cfg.ch_mult)
    names: list[str] = ["conv_in"]
    if part == "encoder":
        for level in range(levels):
            names += [f"down.{level}.blocks.{j}" for j in range(cfg.num_res_blocks)]
            names += [f"down.{level}.downsample"] if level < levels - 1 else []
        names += ["mid.0", "mid.2", "norm_out", "conv_out"]
    else:
        names += ["mid.0", "mid.2"]
        per_level = cfg.decoder_res_blocks if cfg.decoder_res_blocks is not None else cfg.num_res_blocks + 1
        for i in range(levels):
            names += [f"up.{i}.blocks.{j}" for j in range(per_level)]
            names += [f"up.{i}.upsample"] if i < levels - 1 else []
        names += ["norm_out", "conv_out"]
    seq = _sequence(state, f"{src}{part}.")
    if len(seq) != len(names):
        raise ConversionError(f"'{src}{part}' has {len(seq)} modules with weights; the config needs {len(names)}")
    renames = {"res": _RES, "gn": _GN, "resample": _PLAIN, "conv": _PLAIN}
    return [
        (f"{src}{part}.model.{i}.", f"{dst}{part}.{name}.", renames[kind])
        for (i, kind), name in zip(seq, names, strict=True)
    ]


def _attention(src: str, dst: str) -> list[Rule]:
    return [(f"{src}norm.", f"{dst}norm.", _LAYER_NORM), (src, dst, _PLAIN)]


def _transformer_modules(src: str, dst: str, lr_depth: int, hr_depth: int) -> list[Rule]:
    mods: list[Rule] = [
        (f"{src}enc_in.", f"{dst}lr_in.", _PLAIN),
        (f"{src}dec_in.", f"{dst}hr_in.", _PLAIN),
        (f"{src}enc_norm.", f"{dst}lr_norm.", _LAYER_NORM),
        (f"{src}dec_norm.", f"{dst}hr_norm.", _LAYER_NORM),
        (f"{src}to_logits.", f"{dst}head.", _PLAIN),
    ]
    for i in range(lr_depth):
        mods += _attention(f"{src}enc_blocks.{i}.0.", f"{dst}lr_blocks.{i}.attn.")
        mods += _feed_forward(f"{src}enc_blocks.{i}.1.", f"{dst}lr_blocks.{i}.ff.")
    for i in range(hr_depth):
        mods += _attention(f"{src}dec_blocks.{i}.0.", f"{dst}hr_blocks.{i}.attn.")
        mods += _attention(f"{src}dec_blocks.{i}.1.", f"{dst}hr_blocks.{i}.cross_attn.")
        mods += _feed_forward(f"{src}dec_blocks.{i}.2.", f"{dst}hr_blocks.{i}.ff.")
    return mods


def _feed_forward(src: str, dst: str) -> list[Rule]:
    """Their ``Sequential(LayerNorm, Linear, GEGLU, LayerNorm, Linear)``; the first Linear is
    converted separately (:func:`_swap_halves`)."""
    return [
        (f"{src}0.", f"{dst}norm.", _LAYER_NORM),
        (f"{src}3.", f"{dst}norm_inner.", _LAYER_NORM),
        (f"{src}4.", f"{dst}proj_out.", _PLAIN),
    ]


def _swap_halves(w: torch.Tensor) -> torch.Tensor:
    """GEGLU input projection: their ``[x; gate]`` rows (``gate * gelu(x)``) as tokensr's
    ``[h; gate]`` rows (``h * gelu(gate)``)."""
    x, gate = w.chunk(2, dim=0)
    return torch.cat([gate, x], dim=0)


def _check_positions(pos: torch.Tensor, dim: int, side: int, where: str) -> None:
    expected = sincos_2d(dim, side, side, cols_first=True)[None]
    if pos.device.type != "meta" and not torch.allclose(pos.float().cpu(), expected, atol=POS_TOLERANCE):
        diff = (pos.float().cpu() - expected).abs().max().item()
        raise ConversionError(f"{where}pos_emb is not the sin-cos table RealSRT uses (max difference {diff:.3g})")


def convert_state(state: Mapping[str, torch.Tensor], config: RealSRTConfig) -> StateDict:
    """The authors' state dict in tokensr's names and forms for a model built from ``config``.

    Keys that no rule covers are passed through unchanged, so :func:`load_strict` names them.
    """
    tok: VQGANConfig = config_from_dict(VQGANConfig, config.tokenizer)
    k = tok.codebook_size
    rest = dict(state)
    out: StateDict = {}

    def take(key: str, new: str, fn: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> None:
        out[new] = fn(_need(rest, key))
        del rest[key]

    mods: list[Rule] = []
    for part in ("encoder", "decoder"):
        mods += _vqgan_modules(state, "vae.", TOKENIZER, tok, part)
    mods += [
        ("vae.quant_conv.", f"{TOKENIZER}quant_conv.", _PLAIN),
        ("vae.post_quant_conv.", f"{TOKENIZER}post_quant_conv.", _PLAIN),
    ]
    codebook = "vae.quantizer.codebooks.0."
    take(f"{codebook}weight", f"{TOKENIZER}quantizer.embedding.weight", lambda t: t[:k])
    take(f"{codebook}cluster_size_ema", f"{TOKENIZER}quantizer.cluster_size")
    take(f"{codebook}embed_ema", f"{TOKENIZER}quantizer.embed_sum")
    out[f"{TOKENIZER}quantizer.initialized"] = torch.tensor(True)

    for name, settings in (("generator", config.generator), ("critic", config.critic)):
        if settings is None:
            continue
        src = f"{name}."
        dim, side = int(settings["dim"]), config.lr_patch * config.scale // tok.factor
        _check_positions(_need(rest, f"{src}pos_emb"), dim, side, src)
        del rest[f"{src}pos_emb"]
        take(f"{src}token_emb.weight", f"{src}codebook", lambda t: t[:k])
        if name == "generator":
            take(f"{src}mask_token", f"{src}mask_token", lambda t: t.reshape(-1))
        lr_depth, hr_depth = int(settings["lr_depth"]), int(settings["hr_depth"])
        mods += _transformer_modules(src, src, lr_depth, hr_depth)
        for i in range(lr_depth):
            take(f"{src}enc_blocks.{i}.1.1.weight", f"{src}lr_blocks.{i}.ff.proj_in.weight", _swap_halves)
        for i in range(hr_depth):
            take(f"{src}dec_blocks.{i}.2.1.weight", f"{src}hr_blocks.{i}.ff.proj_in.weight", _swap_halves)

    if config.ccm is not None:
        mods += _vqgan_modules(state, "trainable_copy_", "ccm.", tok, "encoder")
        mods += [
            ("fuse_res1.", "ccm.res1.", _RES),
            ("fuse_res2.", "ccm.res2.", _RES),
            ("fuse_attn.norm.", "ccm.attn.norm.", _GN),
            ("fuse_attn.proj_out.", "ccm.attn.proj.", _PLAIN),
            ("zero_out.", "ccm.zero_conv.", _PLAIN),
        ]
        for what in ("weight", "bias"):
            parts = [_need(rest, f"fuse_attn.{x}.{what}") for x in "qkv"]
            out[f"ccm.attn.qkv.{what}"] = torch.cat(parts, dim=0)
            for x in "qkv":
                del rest[f"fuse_attn.{x}.{what}"]

    # longest prefix first, so e.g. `norm.` rules win over a block's plain rule
    mods.sort(key=lambda m: len(m[0]), reverse=True)
    for key in list(rest):
        for src, dst, renames in mods:
            if not key.startswith(src):
                continue
            tail = key[len(src) :]
            for a, b in renames:
                if tail.startswith(a):
                    out[dst + b + tail[len(a) :]] = rest.pop(key)
                    break
            break
    out.update(rest)  # unmapped: load_strict reports them
    return out


# --- the family ----------------------------------------------------------------------------------
def matches(state: Mapping[str, torch.Tensor]) -> bool:
    """An authors' RealSRT model, or a bare VQGAN file of theirs (RQ-VAE codebook keys)."""
    return (
        "generator.enc_in.weight" in state
        or ("quantizer.codebooks.0.embed_ema" in state and "encoder.model.0.weight" in state)
        or "vae.quantizer.codebooks.0.embed_ema" in state
    )


def merge(states: Sequence[StateDict]) -> StateDict:
    """One state dict from the given files, in order (later tensors replace earlier ones); a bare
    VQGAN file (their ``VQGAN`` state dict) goes under ``vae.``."""
    merged: StateDict = {}
    for state in states:
        bare = "quantizer.codebooks.0.weight" in state and "encoder.model.0.weight" in state
        merged.update({f"vae.{k}" if bare else k: v for k, v in state.items()})
    return merged


def convert(states: Sequence[StateDict]) -> RealSRT:
    """The authors' RealSRT checkpoint(s) as a tokensr :class:`RealSRT` (weights loaded)."""
    state = merge(states)
    if "generator.enc_in.weight" not in state:
        raise ConversionError("no RealSRT generator in the given files (only a tokenizer?): give the model checkpoint")
    config = model_config(state)
    model = RealSRT(config)
    load_strict(model, convert_state(state, config), "the RealSRT checkpoint")
    return model.eval()


FAMILIES: list[Family] = [
    Family(
        name="realsrt",
        title=TITLE,
        source=SOURCE,
        licence=LICENCE,
        matches=matches,
        convert=convert,
        files=FILES,
    )
]

__all__ = ["FAMILIES", "convert", "convert_state", "matches", "merge", "model_config", "tokenizer_config"]
