"""Converter for the authors' released ITER checkpoints (chaofengc/ITER, GitHub release v0.1.0).

The release has three files, all BasicSR checkpoints (weights under ``params``):

- ``ITER_swinvqgan.pth``: the Swin-VQGAN (``encoder.*``, ``decoder.*``, ``quantize.*``);
- ``ITER_x2.pth`` / ``ITER_x4.pth``: the LQ encoder ``E_l`` (``lq_encoder.*``), the refinement
  network ``phi_r`` (``token_refine_net.token_refine_net.*``) and the evaluation network
  ``phi_e`` (``token_refine_net.token_crit_net.*``); its training code also saves the frozen
  VQGAN under ``vqgan.*``, which then takes precedence, as in the authors' inference script.

``tokensr convert ITER_swinvqgan.pth ITER_x4.pth -o FOLDER`` (any order) gives one tokensr
:class:`~tokensr.methods.iter.model.ITER` folder. Every parameter maps one to one onto the
``paper`` preset (tokenizer: the VQGAN preset ``iter``) with the same shape; only names change.
The sizes are read from the tensors, so a file at other sizes converts as long as its layout is
ITER's. The checkpoints' derived buffers (Swin ``relative_position_index``, checked against
tokensr's, and ``attn_mask``) are dropped; tokensr computes both. The converted model's defaults
are the authors' inference settings: ``T = 8``, linear schedule, ``alpha = 0.7``, their
start-step rule (``start_rule="reference"``) and token grids padded to multiples of 8.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from tokensr.convert.base import (
    ConversionError,
    Family,
    StateDict,
    learned_codebook_buffers,
    list_indices,
    load_strict,
    strip_prefix,
)
from tokensr.methods.iter.lq_encoder import LQEncoderConfig
from tokensr.methods.iter.model import ITER, ITERConfig
from tokensr.methods.iter.refine import TokenNetConfig
from tokensr.nn.vqgan import VQGANConfig

SOURCE = "https://github.com/chaofengc/ITER/releases/tag/v0.1.0"
TITLE = (
    "ITER: Iterative Token Evaluation and Refinement for Real-World Super-Resolution "
    "(Chen, Zhou, Liao, Wu, Sun, Yan, Lin; AAAI 2024)"
)
LICENCE = "CC BY-NC-SA 4.0 (non-commercial) and NTU S-Lab License 1.0"
FILES = "ITER_swinvqgan.pth and one of ITER_x2.pth / ITER_x4.pth"

VQGAN_PREFIX = "vqgan."  # the Swin-VQGAN inside an ITER_x*.pth
LQ_PREFIX = "lq_encoder.model."
REFINE_PREFIX = "token_refine_net.token_refine_net."
EVAL_PREFIX = "token_refine_net.token_crit_net."

# The authors' inference settings (inference_iter.py): T = 8, linear schedule, alpha 0.7 (tuned
# for the released, retrained phi_e), their start-step rule, and images padded so the token grid
# tiles the Swin windows.
STEPS, ALPHA, SCHEDULE, START_RULE, TOKEN_MULTIPLE = 8, 0.7, "linear", "reference", 8

# Inside every Swin stage ("SwinLayers" there, SwinStack here).
_SWIN_RENAMES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"swin_blks\.(\d+)\.residual_group\.blocks\.(\d+)\."), r"groups.\1.blocks.\2."),
    (re.compile(r"swin_blks\.(\d+)\.conv\."), r"groups.\1.conv."),
    (re.compile(r"attn\.relative_position_bias_table$"), "attn.rel_bias"),
    (re.compile(r"mlp\.attn\."), "mlp.se."),
)
_DERIVED = re.compile(r"(attn\.relative_position_index|attn_mask)$")


# --- reading the layout --------------------------------------------------------------------------
def _kind(state: Mapping[str, torch.Tensor], p: str) -> str:
    """What the module under prefix ``p`` of a VQGAN block list is."""
    if f"{p}conv_in.weight" in state:
        return "swin"
    if f"{p}norm1.weight" in state:
        return "res"
    if f"{p}conv.weight" in state:
        return "resample"
    w = state.get(f"{p}weight")
    if w is None:
        return "?"
    return "conv" if w.dim() == 4 else "norm"


def _need(state: Mapping[str, torch.Tensor], key: str, what: str) -> torch.Tensor:
    if key not in state:
        raise ConversionError(f"{what}: no tensor '{key}'; this is not the layout of ITER's released files")
    return state[key]


@dataclasses.dataclass(frozen=True)
class SwinSizes:
    """Sizes of one SwinLayers stage read from its tensors."""

    dim: int
    groups: int
    depth: int
    heads: int
    window: int
    mlp_ratio: float


def _swin_sizes(state: Mapping[str, torch.Tensor], p: str, what: str) -> SwinSizes:
    dim = int(_need(state, f"{p}conv_in.weight", what).shape[0])
    groups = list_indices(state, f"{p}swin_blks.")
    depth = list_indices(state, f"{p}swin_blks.0.residual_group.blocks.")
    if not groups or not depth:
        raise ConversionError(f"{what}: no Swin blocks under '{p}swin_blks.'")
    blk = f"{p}swin_blks.0.residual_group.blocks.0."
    table = _need(state, f"{blk}attn.relative_position_bias_table", what)
    window = (math.isqrt(int(table.shape[0])) + 1) // 2
    hidden = int(_need(state, f"{blk}mlp.fc1.weight", what).shape[0])
    return SwinSizes(dim, len(groups), len(depth), int(table.shape[1]), window, hidden / dim)


def vqgan_config(state: Mapping[str, torch.Tensor]) -> tuple[VQGANConfig, list[str], list[str]]:
    """The tokensr config of a Swin-VQGAN state dict (unprefixed), and the tokensr names of the
    entries of its block lists: ``encoder.blocks.i`` is ``encoder.{enc_names[i]}`` here, and
    ``decoder.blocks.i`` is ``decoder.{dec_names[i]}``."""
    what = "the Swin-VQGAN"
    codebook = _need(state, "quantize.embedding.weight", what)
    enc_kinds = [_kind(state, f"encoder.blocks.{i}.") for i in list_indices(state, "encoder.blocks.")]
    dec_kinds = [_kind(state, f"decoder.blocks.{i}.") for i in list_indices(state, "decoder.blocks.")]
    if "resample" not in enc_kinds or "resample" not in dec_kinds:
        raise ConversionError(f"{what}: no down/upsampling blocks; this is not ITER's Swin-VQGAN")
    n_res = enc_kinds.index("resample") - 1
    levels = enc_kinds.count("resample") + 1
    n_dec = dec_kinds.index("resample") - 4
    nf = int(_need(state, "encoder.blocks.0.weight", what).shape[0])

    enc_names = ["conv_in"]
    ch_mult = []
    for level in range(levels):
        first = len(enc_names)
        enc_names += [f"down.{level}.blocks.{j}" for j in range(n_res)]
        conv1 = _need(state, f"encoder.blocks.{first}.conv1.weight", what)
        ch_mult.append(int(conv1.shape[0]) // nf)
        if level < levels - 1:
            enc_names.append(f"down.{level}.downsample")
    enc_names += ["mid.0", "mid.1", "mid.2", "norm_out", "conv_out"]
    dec_names = ["conv_in", "mid.0", "mid.1", "mid.2"]
    for up in range(levels):
        dec_names += [f"up.{up}.blocks.{j}" for j in range(n_dec)]
        if up < levels - 1:
            dec_names.append(f"up.{up}.upsample")
    dec_names += ["norm_out", "conv_out"]

    enc_expect = ["conv"] + (["res"] * n_res + ["resample"]) * (levels - 1) + ["res"] * n_res
    enc_expect += ["res", "swin", "res", "norm", "conv"]
    dec_expect = ["conv", "res", "swin", "res"] + (["res"] * n_dec + ["resample"]) * (levels - 1)
    dec_expect += ["res"] * n_dec + ["norm", "conv"]
    if enc_kinds != enc_expect or dec_kinds != dec_expect:
        raise ConversionError(f"{what}: the encoder/decoder block lists are not laid out as ITER's Swin-VQGAN")

    swin = _swin_sizes(state, f"encoder.blocks.{enc_names.index('mid.1')}.", what)
    config = VQGANConfig(
        ch=nf,
        ch_mult=tuple(ch_mult),
        num_res_blocks=n_res,
        attn_levels=(),
        mid_attention=False,
        code_dim=int(codebook.shape[1]),
        codebook_size=int(codebook.shape[0]),
        ema=False,
        mid_swin_dim=swin.dim,
        mid_swin_groups=swin.groups,
        mid_swin_depth=swin.depth,
        mid_swin_heads=swin.heads,
        mid_swin_window=swin.window,
        decoder_res_blocks=n_dec,
        out_act=False,
        quant_convs=False,
    )
    return config, enc_names, dec_names


def _net_sizes(sw: SwinSizes) -> dict[str, object]:
    return dict(
        groups=sw.groups,
        depth=sw.depth,
        heads=sw.heads,
        window=sw.window,
        mlp_ratio=sw.mlp_ratio,
        mlp_se=True,
        swin_convs=True,
    )


def lq_encoder_config(state: Mapping[str, torch.Tensor]) -> LQEncoderConfig:
    """The tokensr config of the released ``E_l`` (keys under ``lq_encoder.model.``)."""
    what = "the LQ encoder"
    ch = int(_need(state, f"{LQ_PREFIX}0.weight", what).shape[0])
    stages = [i for i in list_indices(state, LQ_PREFIX) if f"{LQ_PREFIX}{i}.1.conv.2.weight" in state]
    if stages != list(range(1, len(stages) + 1)):
        raise ConversionError(f"{what}: its downsampling stages are not laid out as ITER's")
    res_blocks = len(list_indices(state, f"{LQ_PREFIX}1.")) - 1
    proj = _need(state, f"{LQ_PREFIX}{len(stages) + 1}.weight", what)
    sw = _swin_sizes(state, f"{LQ_PREFIX}{len(stages) + 2}.", what)
    return LQEncoderConfig(
        codebook_size=int(_need(state, f"{LQ_PREFIX}{len(stages) + 3}.weight", what).shape[0]),
        resample=len(stages),
        ch=ch,
        res_blocks=res_blocks,
        dim=int(proj.shape[0]),
        signed_input=False,
        act="leaky_relu",
        head_norm=False,
        **_net_sizes(sw),  # type: ignore[arg-type]
    )


def token_net_config(state: Mapping[str, torch.Tensor], prefix: str, refine: bool) -> TokenNetConfig:
    """The tokensr config of the released ``phi_r`` (``refine``) or ``phi_e``."""
    what = "the refinement network" if refine else "the evaluation network"
    emb = _need(state, f"{prefix}code_emb.weight", what)
    sw = _swin_sizes(state, f"{prefix}swin_layers.", what)
    extra: dict[str, object] = dict(cond_first=True, lq_flag="mask_row") if refine else dict(mask_token=False)
    return TokenNetConfig(
        codebook_size=int(emb.shape[1]) - (1 if refine else 0),
        dim=int(emb.shape[0]),
        onehot_conv=True,
        combine_bias=False,
        **_net_sizes(sw),  # type: ignore[arg-type]
        **extra,  # type: ignore[arg-type]
    )


# --- renaming --------------------------------------------------------------------------------------
def _swin_inner(rest: str) -> str:
    """Names inside a Swin stage: groups, attention table, SE gate (others unchanged)."""
    for pattern, repl in _SWIN_RENAMES:
        rest = pattern.sub(repl, rest)
    return rest


def rename_vqgan(state: Mapping[str, torch.Tensor], enc: Sequence[str], dec: Sequence[str]) -> StateDict:
    """Swin-VQGAN keys (unprefixed) -> ``tokenizer.*`` keys of the tokensr ITER model; keys
    that have no place keep their name (so the strict load reports them)."""
    out: StateDict = {}
    for key, value in state.items():
        new = "tokenizer.quantizer.embedding.weight" if key == "quantize.embedding.weight" else key
        m = re.match(r"(encoder|decoder)\.blocks\.(\d+)\.(.*)$", key)
        names = enc if m and m.group(1) == "encoder" else dec
        if m and int(m.group(2)) < len(names):
            name, rest = names[int(m.group(2))], m.group(3)
            if ".blocks." in name or name in ("mid.0", "mid.2"):  # a ResBlock: its 1x1 shortcut is `skip`
                rest = re.sub(r"^conv_out\.", "skip.", rest)
            elif name == "mid.1":
                rest = _swin_inner(rest)
            new = f"tokenizer.{m.group(1)}.{name}.{rest}"
        out[new] = value
    return out


# The released E_l's ResBlock: conv = [GroupNorm (wrapped), LeakyReLU, conv, GroupNorm, LeakyReLU, conv].
_LQ_BLOCK = {"conv.0.norm.": "norm1.", "conv.2.": "conv1.", "conv.3.norm.": "norm2.", "conv.5.": "conv2."}


def rename_lq_encoder(state: Mapping[str, torch.Tensor], cfg: LQEncoderConfig) -> StateDict:
    """``lq_encoder.model.*`` -> ``lq_encoder.*`` (other keys pass through unchanged)."""
    n = cfg.resample
    out: StateDict = {}
    for key, value in state.items():
        m = re.match(re.escape(LQ_PREFIX) + r"(\d+)\.(.*)$", key)
        if m is None:
            out[key] = value
            continue
        i, rest = int(m.group(1)), m.group(2)
        if i == 0:
            new = f"conv_in.{rest}"
        elif i <= n:
            sub = re.match(r"(\d+)\.(.*)$", rest)
            j, tail = (int(sub.group(1)), sub.group(2)) if sub else (-1, rest)
            for old, repl in _LQ_BLOCK.items():
                if tail.startswith(old):
                    tail = repl + tail[len(old) :]
                    break
            new = f"stages.{i - 1}.{j}.{tail}"
        elif i == n + 1:
            new = f"proj.{rest}"
        elif i == n + 2:
            new = f"swin.{_swin_inner(rest)}"
        elif i == n + 3:
            new = f"head.{rest}"
        else:
            new = key[len("lq_encoder.") :]
        out[f"lq_encoder.{new}"] = value
    return out


def rename_token_net(state: Mapping[str, torch.Tensor], prefix: str, to: str) -> StateDict:
    """``phi_r`` / ``phi_e`` keys -> ``refine.*`` / ``evaluator.*``."""
    out: StateDict = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            out[key] = value
            continue
        rest = key[len(prefix) :]
        rest = re.sub(r"^swin_layers\.", "body.", rest)
        rest = re.sub(r"^conv_out\.0\.", "norm_out.", rest)
        rest = re.sub(r"^conv_out\.2\.", "head.", rest)
        out[f"{to}{_swin_inner(rest)}"] = value
    return out


# --- the family ------------------------------------------------------------------------------------
def _is_vqgan(state: Mapping[str, torch.Tensor]) -> bool:
    return (
        "quantize.embedding.weight" in state
        and "encoder.blocks.0.weight" in state
        and any(".swin_blks." in k for k in state)
    )


def _is_sr(state: Mapping[str, torch.Tensor]) -> bool:
    return f"{LQ_PREFIX}0.weight" in state and f"{REFINE_PREFIX}code_emb.weight" in state


def matches(state: Mapping[str, torch.Tensor]) -> bool:
    """Any of the three released files."""
    return _is_sr(state) or _is_vqgan(state)


def _check_derived(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """The checkpoints' ``relative_position_index`` buffers (renamed keys) must equal tokensr's."""
    modules = dict(model.named_modules())
    for key, value in state.items():
        if not key.endswith("attn.relative_position_index"):
            continue
        owner = modules.get(key.rsplit(".", 1)[0])
        index = getattr(owner, "rel_index", None)
        if index is not None and (index.shape != value.shape or not torch.equal(index.cpu(), value.long().cpu())):
            raise ConversionError(f"{key} differs from the window layout tokensr computes")


def drop_generator_alias(state: Mapping[str, torch.Tensor]) -> StateDict:
    """The Swin-VQGAN state without ``generator.*``: the authors' VQModel registers its decoder a
    second time as ``generator``, so every decoder tensor is saved twice. The copies must agree."""
    out: StateDict = {}
    for key, value in state.items():
        if not key.startswith("generator."):
            out[key] = value
            continue
        twin = state.get("decoder." + key[len("generator.") :])
        same = twin is not None and twin.shape == value.shape
        if same and twin is not None and not value.is_meta and not twin.is_meta:
            same = torch.equal(twin, value)
        if not same:
            raise ConversionError(f"{key} is not a copy of the decoder's tensor, as ITER's VQGAN saves it")
    return out


def split_files(states: Sequence[StateDict]) -> tuple[StateDict, StateDict]:
    """(Swin-VQGAN state, unprefixed; SR state: E_l, phi_r, phi_e) from the given files."""
    sr = [s for s in states if _is_sr(s)]
    vq = [s for s in states if _is_vqgan(s)]
    if len(sr) + len(vq) < len(states):
        raise ConversionError(f"a file is not one of ITER's released checkpoints ({FILES})")
    if not sr:
        raise ConversionError(
            "ITER needs ITER_x2.pth or ITER_x4.pth (the LQ encoder and the refinement networks); "
            "only the Swin-VQGAN was given"
        )
    if len(sr) > 1 or len(vq) > 1:
        raise ConversionError(f"give one file of each kind ({FILES}), not {len(sr)} SR and {len(vq)} VQGAN files")
    inner = strip_prefix(sr[0], VQGAN_PREFIX)
    if inner:  # the training code saves the frozen VQGAN too; it wins, as in inference_iter.py
        return drop_generator_alias(inner), {k: v for k, v in sr[0].items() if not k.startswith(VQGAN_PREFIX)}
    if not vq:
        raise ConversionError("this ITER_x*.pth holds no Swin-VQGAN weights: also give ITER_swinvqgan.pth")
    return drop_generator_alias(vq[0]), sr[0]


def rename_files(states: Sequence[StateDict]) -> tuple[ITERConfig, StateDict]:
    """The tokensr config read from the released files' tensors, and their state under tokensr's
    names (derived buffers still in; keys with no place keep their names)."""
    vq_state, sr_state = split_files(states)
    tok_cfg, enc_names, dec_names = vqgan_config(vq_state)
    lq_cfg = lq_encoder_config(sr_state)
    if tok_cfg.factor % (2**lq_cfg.resample):
        raise ConversionError(
            f"the LQ encoder downsamples {2**lq_cfg.resample}x, more than the VQGAN's f={tok_cfg.factor}"
        )
    config = ITERConfig(
        scale=tok_cfg.factor // 2**lq_cfg.resample,
        steps=STEPS,
        alpha=ALPHA,
        schedule=SCHEDULE,
        start_rule=START_RULE,
        token_multiple=TOKEN_MULTIPLE,
        tokenizer=dataclasses.asdict(tok_cfg),
        lq_encoder=dataclasses.asdict(lq_cfg),
        refine=dataclasses.asdict(token_net_config(sr_state, REFINE_PREFIX, refine=True)),
        evaluator=dataclasses.asdict(token_net_config(sr_state, EVAL_PREFIX, refine=False)),
    )
    renamed = rename_vqgan(vq_state, enc_names, dec_names)
    sr = rename_token_net(rename_lq_encoder(sr_state, lq_cfg), REFINE_PREFIX, "refine.")
    renamed.update(rename_token_net(sr, EVAL_PREFIX, "evaluator."))
    return config, renamed


def is_derived(key: str) -> bool:
    """A Swin buffer of the released files that tokensr computes instead of storing."""
    return _DERIVED.search(key) is not None


def convert(states: Sequence[StateDict]) -> ITER:
    """ITER_swinvqgan.pth + ITER_x{2,4}.pth (any order) -> a tokensr ITER model."""
    config, renamed = rename_files(states)
    model = ITER(config)
    _check_derived(model, renamed)
    state = {k: v for k, v in renamed.items() if not is_derived(k)}
    codebook = state.get("tokenizer.quantizer.embedding.weight")
    if codebook is not None:  # (without it load_strict names the missing codebook)
        state.update(learned_codebook_buffers(codebook, "tokenizer.quantizer."))
    load_strict(model, state, "the ITER checkpoints")
    return model.eval()


FAMILIES: list[Family] = [
    Family(
        name="iter",
        title=TITLE,
        source=SOURCE,
        licence=LICENCE,
        matches=matches,
        convert=convert,
        files=FILES,
    )
]

__all__ = [
    "FAMILIES",
    "convert",
    "is_derived",
    "rename_files",
    "lq_encoder_config",
    "matches",
    "token_net_config",
    "vqgan_config",
]
