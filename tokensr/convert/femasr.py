"""Converter for the authors' released FeMaSR checkpoints (chaofengc/FeMaSR, release
``v0.1-pretrain_models``; CC BY-NC-SA 4.0).

Three files, three families (BasicSR files: the generator's ``state_dict()`` under ``params``):

- ``FeMaSR_HRP_model_g.pth`` (``femasr-hq``): the high-resolution prior (a VQGAN: encoder,
  1024 x 512 codebook, decoder) -> :class:`tokensr.methods.ugtsr.prior.FeMaSRPrior`, usable as
  UGTSR's tokenizer (``paper`` preset). Its training-only semantic head (``conv_semantic``, a
  512 -> 512 1x1 conv) and the frozen VGG19 it is compared with (``vgg_feat_extractor``) are
  left out.
- ``FeMaSR_SRX2_model_g.pth`` / ``FeMaSR_SRX4_model_g.pth`` (``femasr-x2`` / ``femasr-x4``): the
  SR networks -> :class:`tokensr.methods.femasr.model.FeMaSR`. They hold the LQ encoder and a
  copy of the prior's codebook and decoder, not the prior's encoder; give the HRP file after the
  SR file to include it (then the folder can also tokenize HR images).

The layout is read from the keys and shapes: an SR file has Swin layers; its scale is the
prior's factor (8) over its number of stride-2 convs (one at x4, two at x2). Swin buffers
(``relative_position_index``, ``attn_mask``) are left out: tokensr recomputes them. Every other
tensor has a home of the same shape (:func:`tokensr.convert.base.load_strict`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from tokensr.convert.base import ConversionError, Family, StateDict, learned_codebook_buffers, load_strict, some_keys

if TYPE_CHECKING:  # the model classes are imported when a conversion runs, not with the family list
    from tokensr.methods.ugtsr.prior import PriorConfig

SOURCE = "https://github.com/chaofengc/FeMaSR/releases/tag/v0.1-pretrain_models"
TITLE = (
    "FeMaSR: Real-World Blind Super-Resolution via Feature Matching with Implicit High-Resolution "
    "Priors (Chen et al., ACM MM 2022)"
)
LICENCE = "CC BY-NC-SA 4.0 (non-commercial)"

ENC = "multiscale_encoder."
CODEBOOK = "quantize_group.0.embedding.weight"
SWIN = "swin_blks."
TRAINING_ONLY = ("conv_semantic.", "vgg_feat_extractor.")  # the HQ stage's semantic loss
RECOMPUTED = (".attn.relative_position_index", ".attn_mask")  # Swin buffers tokensr rebuilds
# FeMaSR's ResBlock is a Sequential (GN, act, conv, GN, act, conv); tokensr's ResnetBlock names them
RESBLOCK = {"0": "norm1", "2": "conv1", "3": "norm2", "5": "conv2"}
SWIN_KNOWN = ("norm1.", "norm2.", "attn.qkv.", "attn.proj.", "attn.rel_bias", "mlp.0.", "mlp.2.")
SWIN_NAMES = {"attn.relative_position_bias_table": "attn.rel_bias", "mlp.fc1": "mlp.0", "mlp.fc2": "mlp.2"}


# --- reading the layout ---------------------------------------------------------------------------
def _blocks(state: Mapping[str, torch.Tensor], prefix: str) -> list[int]:
    """Sorted integer indices ``i`` of keys ``prefix + "i."...``."""
    found = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return sorted(found)


def _is_femasr(state: Mapping[str, torch.Tensor]) -> bool:
    return CODEBOOK in state and f"{ENC}in_conv.weight" in state and "decoder_group.0.block.1.weight" in state


def _swin_index(state: Mapping[str, torch.Tensor]) -> int | None:
    """Index of the Swin block in ``multiscale_encoder.blocks`` (None for the HQ prior)."""
    hits = _blocks({k: v for k, v in state.items() if f".{SWIN}" in k}, f"{ENC}blocks.")
    return hits[0] if hits else None


def _prior_levels(state: Mapping[str, torch.Tensor]) -> int:
    return len(_blocks(state, "decoder_group."))


def sr_scale(state: Mapping[str, torch.Tensor]) -> int | None:
    """The SR scale of a FeMaSR SR state dict (None when it is not one): 2 ** levels over
    2 ** (stride-2 convs before the Swin layers)."""
    if not _is_femasr(state):
        return None
    swin = _swin_index(state)
    if swin is None:
        return None
    n_down = swin  # blocks before the Swin layers are the down steps
    factor, down = 2 ** _prior_levels(state), 2**n_down
    return factor // down if factor % down == 0 else None


def _is_hq(state: Mapping[str, torch.Tensor]) -> bool:
    return _is_femasr(state) and _swin_index(state) is None


def prior_config(state: Mapping[str, torch.Tensor], encoder: bool) -> PriorConfig:
    """The prior's sizes from the decoder, codebook and output conv shapes."""
    from tokensr.methods.ugtsr.prior import PriorConfig

    levels = _prior_levels(state)
    if _blocks(state, "quantize_group.") != [0]:
        raise ConversionError(
            "this FeMaSR checkpoint has several codebooks; tokensr converts the released one-codebook models"
        )
    widths = [int(state[f"decoder_group.{i}.block.1.weight"].shape[1]) for i in range(levels)]
    widths.append(int(state[f"decoder_group.{levels - 1}.block.1.weight"].shape[0]))
    codebook = state[CODEBOOK]
    res_blocks = len([i for i in _blocks(state, "decoder_group.0.block.") if i >= 2])
    return PriorConfig(
        in_channels=int(state["out_conv.weight"].shape[0]),
        channels=tuple(reversed(widths)),
        res_blocks=res_blocks,
        code_dim=int(codebook.shape[1]),
        codebook_size=int(codebook.shape[0]),
        encoder=encoder,
    )


# --- key renames --------------------------------------------------------------------------------
def _resblock(rest: str) -> str:
    """``conv.<i>[.norm].<param>`` of a FeMaSR ResBlock -> tokensr ResnetBlock name."""
    m = re.fullmatch(r"conv\.(\d)\.(?:norm\.)?(weight|bias)", rest)  # GroupNorms sit in a NormLayer
    if not m or m.group(1) not in RESBLOCK:
        raise ConversionError(f"unknown ResBlock tensor '{rest}'")
    return f"{RESBLOCK[m.group(1)]}.{m.group(2)}"


def _down_level(rest: str) -> str:
    """``<j>.rest`` inside a down block (Sequential: conv, ResBlock, ResBlock) -> DownLevel name."""
    idx, _, tail = rest.partition(".")
    return f"conv.{tail}" if idx == "0" else f"blocks.{int(idx) - 1}.{_resblock(tail)}"


def _up_level(rest: str) -> str:
    """``<j>.rest`` inside an up block (Sequential: Upsample, conv, ResBlock, ResBlock) -> UpLevel name."""
    idx, _, tail = rest.partition(".")
    return f"conv.{tail}" if idx == "1" else f"blocks.{int(idx) - 2}.{_resblock(tail)}"


def _prior_key(key: str) -> str | None:
    """A shared (codebook / decoder) key -> FeMaSRPrior name; None when not a prior key."""
    if key == CODEBOOK:
        return "quantizer.embedding.weight"
    if key.startswith("after_quant_group.0.conv."):
        return "decoder.conv_in." + key.rsplit(".", 1)[1]
    if key.startswith("out_conv."):
        return "decoder.conv_out." + key.rsplit(".", 1)[1]
    m = re.fullmatch(r"decoder_group\.(\d+)\.block\.(.+)", key)
    if m:
        return f"decoder.up.{m.group(1)}.{_up_level(m.group(2))}"
    return None


def _hq_encoder_key(key: str) -> str | None:
    """An HQ encoder key -> FeMaSRPrior name (encoder.*, quant_conv.*)."""
    if key.startswith("before_quant_group.0."):
        return "quant_conv." + key.rsplit(".", 1)[1]
    if key.startswith(f"{ENC}in_conv."):
        return "encoder.in_conv." + key.rsplit(".", 1)[1]
    m = re.fullmatch(re.escape(ENC) + r"blocks\.(\d+)\.(.+)", key)
    if m:
        return f"encoder.down.{m.group(1)}.{_down_level(m.group(2))}"
    return None


def _swin_key(rest: str) -> str:
    """``swin_blks.<g>.…`` (SwinIR RSTB) -> tokensr SwinGroup name under ``encoder.swin.<g>``."""
    m = re.fullmatch(r"swin_blks\.(\d+)\.(conv\.(?:weight|bias))", rest)
    if m:
        return f"encoder.swin.{m.group(1)}.{m.group(2)}"
    m = re.fullmatch(r"swin_blks\.(\d+)\.residual_group\.blocks\.(\d+)\.(.+)", rest)
    if not m:
        raise ConversionError(f"unknown Swin tensor '{rest}'")
    tail = m.group(3)
    for theirs, ours in SWIN_NAMES.items():
        if tail == theirs or tail.startswith(theirs + "."):
            tail = ours + tail[len(theirs) :]
    if not tail.startswith(SWIN_KNOWN):
        raise ConversionError(f"unknown Swin tensor '{rest}'")
    return f"encoder.swin.{m.group(1)}.blocks.{m.group(2)}.{tail}"


def _sr_key(key: str, swin: int) -> str | None:
    """An SR-only key -> FeMaSR (UGTSR femasr layout) name."""
    if key.startswith("before_quant_group.0."):
        return "encoder.to_code." + key.rsplit(".", 1)[1]
    if key.startswith(f"{ENC}in_conv."):
        return "encoder.in_conv." + key.rsplit(".", 1)[1]
    m = re.fullmatch(re.escape(ENC) + r"blocks\.(\d+)\.(.+)", key)
    if not m:
        return None
    j, rest = int(m.group(1)), m.group(2)
    if j < swin:
        return f"encoder.down.{j}.{_down_level(rest)}"
    if j == swin:
        return _swin_key(rest)
    return f"pyramid.steps.{j - swin - 1}.{_up_level(rest)}"


def _rename(state: Mapping[str, torch.Tensor], rename: Callable[[str], str | None], what: str) -> StateDict:
    """Apply ``rename`` (key -> new key or None) to every tensor that is not left out on
    purpose; a key with no home is a ConversionError naming it."""
    out: StateDict = {}
    homeless = []
    for k, v in state.items():
        if k.startswith(TRAINING_ONLY) or k.endswith(RECOMPUTED):
            continue
        new = rename(k)
        if new is None:
            homeless.append(k)
        else:
            out[new] = v
    if homeless:
        raise ConversionError(f"{what} has {len(homeless)} tensors tokensr does not know ({some_keys(homeless)})")
    return out


def prior_state(state: Mapping[str, torch.Tensor], with_encoder: bool) -> StateDict:
    """FeMaSRPrior tensors from a FeMaSR state dict (HQ: everything; SR: codebook and decoder)."""

    def rename(k: str) -> str | None:
        return _prior_key(k) or (_hq_encoder_key(k) if with_encoder else None)

    keep = state if with_encoder else {k: v for k, v in state.items() if _prior_key(k) is not None}
    out = _rename(keep, rename, "the FeMaSR HQ prior")
    out.update(learned_codebook_buffers(out["quantizer.embedding.weight"]))
    return out


# --- conversions ----------------------------------------------------------------------------------
def convert_hq(states: Sequence[StateDict]) -> nn.Module:
    """``FeMaSR_HRP_model_g.pth`` -> FeMaSRPrior."""
    from tokensr.methods.ugtsr.prior import FeMaSRPrior

    if len(states) != 1:
        raise ConversionError(f"femasr-hq converts one file (FeMaSR_HRP_model_g.pth), got {len(states)}")
    state = states[0]
    if not _is_hq(state):
        raise ConversionError(
            "the file is not the FeMaSR HQ prior (FeMaSR_HRP_model_g.pth: encoder, codebook, decoder)"
        )
    model = FeMaSRPrior(prior_config(state, encoder=True))
    mapped = prior_state(state, with_encoder=True)
    load_strict(model, mapped, "the FeMaSR HQ prior")
    return model.eval()


def sr_sizes(state: Mapping[str, torch.Tensor]) -> dict[str, object]:
    """LQ-network sizes of an SR state dict (Swin groups, depth, heads, window, MLP ratio)."""
    swin = _swin_index(state)
    if swin is None:
        raise ConversionError("not a FeMaSR SR checkpoint: it has no Swin layers")
    pre = f"{ENC}blocks.{swin}.{SWIN}"
    groups = _blocks(state, pre)
    depth = _blocks(state, f"{pre}0.residual_group.blocks.")
    table = state[f"{pre}0.residual_group.blocks.0.attn.relative_position_bias_table"]
    dim = int(state[f"{pre}0.residual_group.blocks.0.norm1.weight"].shape[0])
    hidden = int(state[f"{pre}0.residual_group.blocks.0.mlp.fc1.weight"].shape[0])
    window = (int(round(table.shape[0] ** 0.5)) + 1) // 2
    n_up = len(_blocks(state, f"{ENC}blocks.")) - swin - 1  # the upsampling blocks after the Swin layers
    up_blocks = _blocks(state, f"{ENC}blocks.{swin + 1}.")  # Upsample, conv, ResBlocks
    res_blocks = len([i for i in up_blocks if i >= 2]) if n_up else 2
    return dict(
        swin_dim=dim,
        swin_groups=len(groups),
        swin_depth=len(depth),
        swin_heads=int(table.shape[1]),
        swin_window=window,
        swin_mlp_ratio=hidden / dim,
        enc_res_blocks=res_blocks,
        fusion_stages=tuple(range(1, n_up + 1)),
    )


def convert_sr(states: Sequence[StateDict], want: int) -> nn.Module:
    """``FeMaSR_SRX{2,4}_model_g.pth`` [+ ``FeMaSR_HRP_model_g.pth``] -> FeMaSR."""
    from tokensr.methods.femasr.model import FeMaSR, femasr_config

    if not 1 <= len(states) <= 2:
        raise ConversionError(
            f"femasr-x{want} converts the SR file, optionally followed by the HRP file; got {len(states)} files"
        )
    state = states[0]
    scale = sr_scale(state)
    if scale != want:
        what = "it has no FeMaSR SR layout" if scale is None else f"it is the x{scale} model"
        raise ConversionError(f"the first file is not a FeMaSR x{want} SR checkpoint ({what})")
    hq = states[1] if len(states) == 2 else None
    if hq is not None and not _is_hq(hq):
        raise ConversionError("the second file is not the FeMaSR HQ prior (FeMaSR_HRP_model_g.pth)")
    if hq is not None and not torch.equal(hq[CODEBOOK].float(), state[CODEBOOK].float()):
        raise ConversionError("the HQ prior's codebook differs from the SR model's: not the prior it was trained on")
    prior = prior_config(state, encoder=hq is not None)
    swin = _swin_index(state)
    if swin is None:  # (sr_scale found it)
        raise ConversionError("not a FeMaSR SR checkpoint: it has no Swin layers")
    model = FeMaSR(femasr_config(scale, prior, **sr_sizes(state)))
    mapped = {f"tokenizer.{k}": v for k, v in prior_state(state, with_encoder=False).items()}
    if hq is not None:
        enc = {k: v for k, v in hq.items() if _hq_encoder_key(k) is not None}
        mapped.update({f"tokenizer.{_hq_encoder_key(k)}": v for k, v in enc.items()})
    sr_only = {k: v for k, v in state.items() if _prior_key(k) is None}
    mapped.update(_rename(sr_only, lambda k: _sr_key(k, swin), f"the FeMaSR x{scale} SR model"))
    load_strict(model, mapped, f"the FeMaSR x{scale} SR model")
    return model.eval()


FAMILIES: list[Family] = [
    Family(
        name="femasr-hq",
        title=f"{TITLE}: the high-resolution prior (HRP, VQGAN codebook + decoder)",
        source=SOURCE,
        licence=LICENCE,
        matches=_is_hq,
        convert=convert_hq,
        files="FeMaSR_HRP_model_g.pth",
    ),
    Family(
        name="femasr-x2",
        title=f"{TITLE}: x2 SR model",
        source=SOURCE,
        licence=LICENCE,
        matches=lambda state: sr_scale(state) == 2,
        convert=lambda states: convert_sr(states, 2),
        files="FeMaSR_SRX2_model_g.pth (then optionally FeMaSR_HRP_model_g.pth)",
    ),
    Family(
        name="femasr-x4",
        title=f"{TITLE}: x4 SR model",
        source=SOURCE,
        licence=LICENCE,
        matches=lambda state: sr_scale(state) == 4,
        convert=lambda states: convert_sr(states, 4),
        files="FeMaSR_SRX4_model_g.pth (then optionally FeMaSR_HRP_model_g.pth)",
    ),
]

__all__ = ["FAMILIES", "convert_hq", "convert_sr", "prior_config", "sr_scale", "sr_sizes"]
