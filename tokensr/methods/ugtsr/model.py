"""UGTSR networks (Wen et al., "Incorporating Uncertainty-Guided and Top-k Codebook Matching for
Real-World Blind Image Super-Resolution"): a FeMaSR-style codebook-matching SR network on the
project's frozen VQGAN, with Top-k matching, Align-Attention and an uncertainty head.

Data flow for an LR batch ``y`` in [0, 1] (``s`` = SR scale, ``f`` = tokenizer factor)::

    y -> LQEncoder ------------------------------> feat [B, swin_dim, sH/f, sW/f]
                                                    z    [B, code_dim, sH/f, sW/f]   (z^l)
    z -> k nearest codes Z_k1..Z_kk --TopKFusion--> z'   (k > 1; z' = z when k = 1)
    z' -> nearest code Z_p (straight-through) -----> z_q
          (fusion_mode "select": TopKSelect gives k logits; z' = their softmax-weighted sum
          of the candidates, Z_p = the candidate of largest weight)
    z_q -> frozen post_quant_conv, conv_in, mid ---> h0
    h0 += AlignAttention(Q = feat, K = V = Z_p)       (align_attention; K/V are codebook vectors)
    for each decoder stage i: h += LQ features at that resolution (fusion_stages; FeMaSR's
        additive fusion, or Align-Attention with K = V = the decoder features when i is in
        align_stages), then the frozen stage i
    h -> frozen norm_out, conv_out -> SR image (the "mean" branch)
    h -> UncertaintyHead -> s = log-uncertainty per HR pixel (the "variance" branch)

The LQ encoder works at LR resolution and reaches the token grid (``sH/f``) with
``log2(f/s)`` stride-2 downsamplings (none for f = 4 at x4, one at x2) or ``log2(s/f)``
upsamplings when ``f < s``; Swin groups (:class:`tokensr.nn.swin.SwinGroup`) follow, as in
FeMaSR. Every new layer that writes into the frozen decoder is zero-initialised, so an
untrained UGTSR decodes exactly the matched codes, like the plain VQGAN.

Two layouts (``layout``): ``tokensr`` (the default; the taming-style VQGAN and the LQ encoder
above, images in [-1, 1] inside) and ``femasr``: FeMaSR's own network around a converted
FeMaSR prior (:class:`tokensr.methods.ugtsr.prior.FeMaSRPrior`; images in [0, 1] inside, LQ
features added to the decoder as they are, FeMaSR's LQ encoder). A ``femasr`` model with
``top_k=1``, no Align-Attention and no uncertainty head *is* FeMaSR (``tokensr.methods.femasr``);
the ``paper`` preset is FeMaSR's sizes plus UGTSR's modules.

The pieces live by role: :mod:`tokensr.methods.ugtsr.encoder` (``LQEncoder``, ``LQPyramid``),
:mod:`tokensr.methods.ugtsr.fusion` (``TopKFusion``), :mod:`tokensr.methods.ugtsr.align`
(``AlignAttention``), the nearest-codes search :func:`tokensr.nn.quantizer.knn_codes`; this
module holds the config, the uncertainty head and the model that wires them.

:class:`UGTSR` keeps the tokenizer inside (``tokenizer.`` prefix of one safetensors file,
``model_type "ugtsr"``); the tokenizer stays frozen and in eval mode.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from tokensr.methods.ugtsr.align import AlignAttention
from tokensr.methods.ugtsr.encoder import FeMaSRLQEncoder, FeMaSRPyramid, LQEncoder, LQPyramid
from tokensr.methods.ugtsr.fusion import TopKFusion, TopKSelect, gather_codes
from tokensr.methods.ugtsr.prior import FeMaSRPrior, PriorConfig, PriorDecoder
from tokensr.nn.blocks import ResnetBlock, group_norm, zero_module
from tokensr.nn.quantizer import knn_codes
from tokensr.nn.vqgan import VQGAN, VQGANConfig
from tokensr.pretrained import WEIGHTS_NAME, PretrainedMixin, check_fields, config_from_dict, read_config, resolve

TOP_KS = (1, 3, 5)  # the paper's choices; any k >= 1 works
LAYOUTS = ("tokensr", "femasr")  # taming VQGAN + tokensr LQ encoder | FeMaSR prior + FeMaSR LQ network
FUSION_MODES = ("residual", "select")  # nearest + correction, re-quantised | choose one of the k candidates


@dataclass
class UGTSRConfig:
    """Sizes and switches of a UGTSR model (defaults = the ``small`` preset, x4)."""

    scale: int = 4
    tokenizer: dict[str, Any] = field(default_factory=dict)  # VQGANConfig (or PriorConfig) as a dict
    # "tokensr": taming VQGAN tokenizer; "femasr": FeMaSR prior tokenizer and FeMaSR's LQ network
    layout: str = "tokensr"
    # LQ encoder (enc_ch / enc_ch_max: tokensr layout only; femasr takes the prior's widths)
    enc_ch: int = 48  # channels at LR resolution
    enc_ch_max: int = 96  # channels double at each downsampling up to this
    enc_res_blocks: int = 1  # ResNet blocks per resolution
    swin_dim: int = 96
    swin_groups: int = 2
    swin_depth: int = 2
    swin_heads: int = 4
    swin_window: int = 8
    swin_mlp_ratio: float = 2.0  # hidden width of the Swin MLPs (FeMaSR / SwinIR: 4)
    # decoder fusion of LQ features: decoder stages (1 .. L-1) that receive them; None = the
    # intermediate resolutions 1 .. L-2 (tokensr layout) or every stage 1 .. L-1 (femasr layout,
    # as FeMaSR: its decoder has no full-resolution stage)
    fusion_stages: tuple[int, ...] | None = None
    # Top-k matching (k = 1: plain nearest-neighbour matching, no fusion module)
    top_k: int = 3
    fusion_dim: int = 96
    fusion_heads: int = 4
    fusion_blocks: int = 1
    fusion_ffn: float = 2.0  # GDFN expansion
    fusion_with_lq: bool = False  # also feed z^l to the fusion (the paper fuses the k codes only)
    # "residual": z' = nearest code + learned correction, then its nearest code (saved configs
    # without the field are this); "select": k logits per pixel choose one of the candidates
    fusion_mode: str = "residual"
    # Align-Attention
    align_attention: bool = True
    align_stages: tuple[int, ...] = (0,)  # 0 = token level (K/V = codes); i >= 1 replaces the additive fusion
    align_dim: int = 96
    align_heads: int = 4
    align_window: int = 8
    # uncertainty ("variance") branch
    uncertainty_head: bool = True
    uncertainty_channels: int = 1  # 1 = one log-uncertainty per pixel; 3 = per colour channel
    uncertainty_hidden: int = 32
    # how the weights were trained (written by the training tasks; read by model cards and the
    # ablation benchmark), e.g. {"stage": "udl", "uncertainty_loss": "udl", "degradation": "bsrgan"}
    training: dict[str, Any] = field(default_factory=dict)


# Named sizes (every field except scale/tokenizer/layout; `create` takes the layout from the
# tokenizer). `paper` is FeMaSR's sizes (4 Swin groups of depth 6, 256 wide, 8 heads, window 8,
# MLP ratio 4) plus UGTSR's modules: on a converted FeMaSR prior it is FeMaSR's network plus
# UGTSR's modules, as the paper builds it; `small` trains on CPU with the f=4 `vqgan-small`
# tokenizer; `tiny` is for tests.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(
        enc_ch=256,
        enc_ch_max=256,
        enc_res_blocks=2,
        swin_dim=256,
        swin_groups=4,
        swin_depth=6,
        swin_heads=8,
        swin_window=8,
        swin_mlp_ratio=4.0,
        fusion_dim=256,
        fusion_heads=8,
        fusion_blocks=1,
        align_dim=256,
        align_heads=8,
        align_window=8,
        uncertainty_hidden=64,
    ),
    "small": dict(
        enc_ch=48,
        enc_ch_max=96,
        enc_res_blocks=1,
        swin_dim=96,
        swin_groups=2,
        swin_depth=2,
        swin_heads=4,
        swin_window=8,
        fusion_dim=96,
        fusion_heads=4,
        fusion_blocks=1,
        align_dim=96,
        align_heads=4,
        align_window=8,
        uncertainty_hidden=32,
    ),
    "tiny": dict(
        enc_ch=8,
        enc_ch_max=16,
        enc_res_blocks=1,
        swin_dim=16,
        swin_groups=1,
        swin_depth=2,
        swin_heads=2,
        swin_window=4,
        fusion_dim=16,
        fusion_heads=2,
        fusion_blocks=1,
        align_dim=16,
        align_heads=2,
        align_window=4,
        uncertainty_hidden=8,
    ),
}


# --- uncertainty head -------------------------------------------------------------------------


class UncertaintyHead(nn.Module):
    """The "variance" branch: final decoder features -> log-uncertainty ``s`` per HR pixel."""

    def __init__(self, in_ch: int, hidden: int, out_ch: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            group_norm(in_ch),
            nn.SiLU(),
            nn.Conv2d(in_ch, hidden, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(hidden, out_ch, 3, padding=1),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


# --- the whole model ----------------------------------------------------------------------------
@dataclass
class UGTSROutput:
    image: torch.Tensor  # [B, 3, H, W] SR image on the [0, 1] scale (not clamped: losses need it raw)
    z_lq: torch.Tensor  # [B, C, h, w] LQ features in code space (z^l)
    z_fused: torch.Tensor | None  # [B, C, h, w] fused feature z' (None when k = 1)
    indices: torch.Tensor  # [B, h, w] the matched codes the decoder used
    candidates: torch.Tensor  # [B, k, h, w] the k nearest codes of z^l, nearest first
    uncertainty: torch.Tensor | None  # [B, 1 | 3, H, W] log-uncertainty s (when asked for)
    select_logits: torch.Tensor | None = None  # [B, k, h, w] (fusion_mode "select", k > 1)


class UGTSR(nn.Module, PretrainedMixin):
    config_class: ClassVar[type] = UGTSRConfig
    model_type: ClassVar[str] = "ugtsr"

    def __init__(self, config: UGTSRConfig) -> None:
        super().__init__()
        self.config = c = config
        if c.layout not in LAYOUTS:
            raise ValueError(f"unknown ugtsr layout '{c.layout}' (choose from {', '.join(LAYOUTS)})")
        femasr = c.layout == "femasr"
        tok_cfg = config_from_dict(PriorConfig if femasr else VQGANConfig, c.tokenizer)
        self.tokenizer: VQGAN | FeMaSRPrior = FeMaSRPrior(tok_cfg) if femasr else VQGAN(tok_cfg)
        self.tokenizer.requires_grad_(False)
        self.tokenizer.eval()
        f, K, C = tok_cfg.factor, tok_cfg.codebook_size, tok_cfg.code_dim
        if c.scale < 1:
            raise ValueError(f"scale must be >= 1, got {c.scale}")
        if not 1 <= c.top_k <= K:
            raise ValueError(f"top_k = {c.top_k} must be between 1 and the codebook size {K}")
        if c.fusion_mode not in FUSION_MODES:
            raise ValueError(f"unknown fusion_mode '{c.fusion_mode}' (choose from {', '.join(FUSION_MODES)})")
        if c.uncertainty_channels not in (1, 3):
            raise ValueError(f"uncertainty_channels must be 1 or 3, got {c.uncertainty_channels}")
        dec = self.tokenizer.decoder
        n_stages = len(dec.up)
        # input width of every decoder stage
        if isinstance(dec, PriorDecoder):
            self.stage_channels = dec.stage_channels
        else:
            self.stage_channels = [
                int(cast(ResnetBlock, cast(nn.ModuleList, dec.up[i].blocks)[0]).norm1.num_channels)
                for i in range(n_stages)
            ]
        default_fusion = tuple(range(1, n_stages if femasr else n_stages - 1))
        fusion = c.fusion_stages if c.fusion_stages is not None else default_fusion
        self.fusion_stages = tuple(sorted(set(int(i) for i in fusion)))
        bad = [i for i in self.fusion_stages if not 1 <= i < n_stages]
        if bad:
            raise ValueError(f"fusion_stages {bad} out of range: this decoder has stages 1..{n_stages - 1}")
        self.align_stages = tuple(sorted(set(int(i) for i in c.align_stages))) if c.align_attention else ()
        bad = [i for i in self.align_stages if i != 0 and i not in self.fusion_stages]
        if bad:
            raise ValueError(f"align_stages {bad} must be 0 or one of the fusion_stages {self.fusion_stages}")

        self.encoder: LQEncoder | FeMaSRLQEncoder
        self.pyramid: LQPyramid | FeMaSRPyramid | None = None
        if femasr:  # FeMaSR: its LQ network, LQ features added as they are
            self.encoder = FeMaSRLQEncoder(c, tok_cfg, c.scale)
            if self.fusion_stages:
                self.pyramid = FeMaSRPyramid(self.stage_channels, c.enc_res_blocks, max(self.fusion_stages))
        else:
            self.encoder = LQEncoder(c, C, f, c.scale)
            if self.fusion_stages:
                self.pyramid = LQPyramid(c.swin_dim, self.stage_channels, max(self.fusion_stages))
        self.inject = nn.ModuleDict(
            {
                str(i): nn.Identity()
                if femasr
                else zero_module(nn.Conv2d(self.stage_channels[i], self.stage_channels[i], 1))
                for i in self.fusion_stages
                if i not in self.align_stages
            }
        )
        fusion_cls = TopKSelect if c.fusion_mode == "select" else TopKFusion
        self.fusion: TopKFusion | TopKSelect | None = (
            fusion_cls(C, c.top_k, c.fusion_dim, c.fusion_heads, c.fusion_blocks, c.fusion_ffn, c.fusion_with_lq)
            if c.top_k > 1
            else None
        )
        align: dict[str, nn.Module] = {}
        for i in self.align_stages:
            q_dim = c.swin_dim if i == 0 else self.stage_channels[i]
            kv_dim = C if i == 0 else self.stage_channels[i]
            align[str(i)] = AlignAttention(
                q_dim, kv_dim, self.stage_channels[i], c.align_dim, c.align_heads, c.align_window
            )
        self.align = nn.ModuleDict(align)
        out_ch = dec.out_channels if isinstance(dec, PriorDecoder) else int(dec.norm_out.num_channels)
        self.uncertainty = (
            UncertaintyHead(out_ch, c.uncertainty_hidden, c.uncertainty_channels) if c.uncertainty_head else None
        )

    # --- construction -----------------------------------------------------------------------------
    @classmethod
    def create(cls, tokenizer: VQGAN | FeMaSRPrior, scale: int = 4, preset: str = "small", **overrides: Any) -> UGTSR:
        """A fresh (untrained) UGTSR around a trained tokenizer (its weights are copied in). The
        layout follows the tokenizer: ``femasr`` for a FeMaSR prior (with the ``paper`` preset:
        FeMaSR's network plus UGTSR's modules, as the paper), ``tokensr`` for a VQGAN."""
        if preset not in PRESETS:
            raise ValueError(f"unknown ugtsr preset '{preset}' (choose from {', '.join(PRESETS)})")
        check_fields(UGTSRConfig, overrides, "ugtsr model", exclude=("scale", "tokenizer"))
        values: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in {**PRESETS[preset], **overrides}.items()
        }
        layout = "femasr" if isinstance(tokenizer, FeMaSRPrior) else "tokensr"
        if values.setdefault("layout", layout) != layout:
            raise ValueError(
                f"layout '{values['layout']}' does not fit a {type(tokenizer).__name__} tokenizer (it needs '{layout}')"
            )
        config = UGTSRConfig(scale=int(scale), tokenizer=dataclasses.asdict(tokenizer.config), **values)
        model = cls(config)
        model.tokenizer.load_state_dict(tokenizer.state_dict())
        return model.to(tokenizer.quantizer.codebook.device).eval()

    @classmethod
    def from_stage(cls, name_or_path: str | Path, device: str | torch.device = "cpu", **overrides: Any) -> UGTSR:
        """Load a saved UGTSR with some config fields changed (stage II from a stage-I folder:
        ``top_k=3, align_attention=True``). Weights of modules the new config adds (fusion,
        align-attention, uncertainty head) start fresh; every other weight must be present."""
        folder = resolve(name_or_path)
        data = read_config(folder)
        if data.get("model_type") != cls.model_type:
            raise ValueError(f"'{name_or_path}' holds a {data.get('model_type')} model, not {cls.model_type}")
        for k in ("scale", "tokenizer"):
            if k in overrides:
                raise ValueError(f"{k} cannot change when continuing from a saved model")
        data.update({k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()})
        model = cls.from_config(data)
        state = load_file(str(folder / WEIGHTS_NAME), device="cpu")
        try:
            result = model.load_state_dict(state, strict=False)
        except RuntimeError as e:  # a tensor of another shape
            detail = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
            raise ValueError(f"'{name_or_path}' does not fit the requested UGTSR config ({detail})") from None
        optional = ("fusion.", "align.", "uncertainty.", "inject.")
        missing = [k for k in result.missing_keys if not k.startswith(optional)]
        unexpected = [k for k in result.unexpected_keys if not k.startswith(optional)]
        if missing or unexpected:
            what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
            raise ValueError(f"'{name_or_path}' does not fit the requested UGTSR config ({what})")
        return model.eval().to(device)

    def warm_start(self, name_or_path: str | Path, bridge: bool = True) -> tuple[list[str], list[str], list[str]]:
        """Copy in every weight of a saved UGTSR (of any scale or preset) whose name and shape
        match one of this model's trained modules; the tokenizer is left as it is. With
        ``bridge``, the encoder layers the source lacks get a function-preserving start
        (:meth:`LQEncoder.bridge`). Returns ``(copied, bridged, fresh)`` parameter names.
        This starts an x2 model from an x4 one: only the LQ encoder's resolution-changing layers
        differ, the Swin groups, fusion, Align-Attention and decoder-side layers carry over."""
        folder = resolve(name_or_path)
        data = read_config(folder)
        if data.get("model_type") != self.model_type:
            raise ValueError(f"'{name_or_path}' holds a {data.get('model_type')} model, not {self.model_type}")
        saved = load_file(str(folder / WEIGHTS_NAME), device="cpu")
        state = self.state_dict()
        if any(
            k not in saved or saved[k].shape != v.shape or not torch.equal(saved[k].to(v), v)
            for k, v in state.items()
            if k.startswith("tokenizer.")
        ):
            raise ValueError(f"'{name_or_path}' was trained on another tokenizer")
        own = {k: v for k, v in state.items() if not k.startswith("tokenizer.")}
        take = {k: saved[k] for k, v in own.items() if k in saved and saved[k].shape == v.shape}
        self.load_state_dict(take, strict=False)
        bridged = self.encoder.bridge(set(take), saved, prefix="encoder.") if bridge else []
        return sorted(take), sorted(bridged), sorted(set(own) - set(take) - set(bridged))

    # --- properties -------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.tokenizer.quantizer.codebook.device

    @property
    def scale(self) -> int:
        return self.config.scale

    @property
    def codebook(self) -> torch.Tensor:
        return self.tokenizer.quantizer.codebook

    @property
    def pad_multiple(self) -> int:
        """LR sides must be multiples of this (the encoder's downsamplings)."""
        return 2**self.encoder.n_down

    @property
    def pixels01(self) -> bool:
        """Whether the network takes and gives pixels in [0, 1] (femasr layout) or [-1, 1]."""
        return self.config.layout == "femasr"

    def train(self, mode: bool = True) -> UGTSR:
        """The frozen tokenizer always stays in eval mode (its EMA codebook must never move)."""
        super().train(mode)
        self.tokenizer.eval()
        return self

    def trainable_modules(self) -> dict[str, nn.Module]:
        """The modules UGTSR adds around the tokenizer, by name (``None`` ones left out)."""
        mods: dict[str, nn.Module] = {"encoder": self.encoder, "inject": self.inject, "align": self.align}
        for name in ("pyramid", "fusion", "uncertainty"):
            m = getattr(self, name)
            if m is not None:
                mods[name] = m
        return mods

    # --- pieces -----------------------------------------------------------------------------------
    def resolve_top_k(self, top_k: int | None) -> int:
        """The trained k, or 1 (plain nearest matching, skipping the fusion)."""
        k = self.config.top_k if top_k is None else int(top_k)
        if k not in (1, self.config.top_k):
            raise ValueError(
                f"this model was trained with top_k={self.config.top_k}; it can run with k = "
                f"{self.config.top_k} or 1, not {k}"
            )
        return k

    def match(
        self, z: torch.Tensor, top_k: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Top-k matching of LQ features ``z`` (eqs. 6-8).

        Returns ``(z_q, z_fused, indices, candidates)``: ``z_q`` is the matched code with a
        straight-through gradient to ``z_fused`` (k > 1) or ``z`` (k = 1).
        """
        return self.match_with_logits(z, top_k)[:4]

    def match_with_logits(
        self, z: torch.Tensor, top_k: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """:meth:`match` plus the selection logits ``[B, k, h, w]`` of a ``select`` fusion
        (``None`` for ``residual`` or k = 1). With ``select`` the final code is the candidate
        of largest logit and ``z_fused`` the softmax-weighted sum of the candidate vectors."""
        k = self.resolve_top_k(top_k)
        codebook = self.codebook
        candidates = knn_codes(z, codebook, k)
        logits: torch.Tensor | None = None
        if k > 1:
            codes = gather_codes(codebook, candidates).to(z.dtype)
            if isinstance(self.fusion, TopKSelect):
                logits = self.fusion(codes, z)
                target, slot = self.fusion.combine(codes, logits)
                indices = candidates.gather(1, slot[:, None])[:, 0]
            else:
                assert self.fusion is not None
                target = self.fusion(codes, z)
                indices = knn_codes(target, codebook, 1)[:, 0]
            fused: torch.Tensor | None = target
        else:
            fused, target, indices = None, z, candidates[:, 0]
        hard = self.tokenizer.quantizer.lookup(indices).to(z.dtype)
        return target + (hard - target).detach(), fused, indices, candidates, logits

    def decode(self, z_q: torch.Tensor, indices: torch.Tensor, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Walk the frozen decoder with LQ fusion; returns (image in [-1, 1], or [0, 1] in the
        femasr layout, and the final features)."""
        tok = self.tokenizer
        dec = tok.decoder
        h = dec.mid(dec.conv_in(tok.post_quant_conv(z_q)))
        if 0 in self.align_stages:
            codes = tok.quantizer.lookup(indices).to(h.dtype)  # K = V = codebook vectors of the matched codes
            h = h + self.align["0"](feat, codes)
        pyramid = self.pyramid(feat) if self.pyramid is not None else []
        for i in range(len(dec.up)):
            if i in self.fusion_stages:
                lq = pyramid[i - 1]
                h = h + (self.align[str(i)](lq, h) if i in self.align_stages else self.inject[str(i)](lq))
            h = dec.run_stage(i, h)
        if isinstance(dec, PriorDecoder):
            return dec.head(h), h
        return dec.conv_out(F.silu(dec.norm_out(h))), h

    def forward(self, lr01: torch.Tensor, top_k: int | None = None, with_uncertainty: bool = False) -> UGTSROutput:
        """One LR batch in [0, 1] (sides multiples of :attr:`pad_multiple`) -> :class:`UGTSROutput`."""
        m = self.pad_multiple
        if lr01.shape[-2] % m or lr01.shape[-1] % m:
            raise ValueError(f"LR size {tuple(lr01.shape[-2:])} is not a multiple of {m} (pad it first)")
        feat, z = self.encoder(lr01 if self.pixels01 else lr01 * 2 - 1)
        z_q, fused, indices, candidates, logits = self.match_with_logits(z, top_k)
        out, h = self.decode(z_q, indices, feat)
        image = out if self.pixels01 else (out + 1) / 2
        s = None
        if with_uncertainty:
            if self.uncertainty is None:
                raise ValueError("this UGTSR model has no uncertainty head")
            s = self.uncertainty(h)
        return UGTSROutput(image, z, fused, indices, candidates, s, logits)

    @torch.no_grad()
    def upscale(self, lr01: torch.Tensor, top_k: int | None = None) -> torch.Tensor:
        """LR batch of any size -> SR image in [0, 1] of exactly ``scale`` times its size."""
        h, w = lr01.shape[-2:]
        out = self(pad_lr(lr01, self.pad_multiple), top_k).image
        return out[..., : h * self.scale, : w * self.scale].clamp(0, 1)

    @torch.no_grad()
    def gt_indices(self, hr01: torch.Tensor) -> torch.Tensor:
        """The HR image's own codes ``[B, H/f, W/f]``: :meth:`tokensr.nn.vqgan.VQGAN.tokenize`
        (float32 even under autocast, so mixed precision cannot change the targets)."""
        return self.tokenizer.tokenize(hr01)


def pad_lr(lr: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad the bottom/right of ``[B, C, h, w]`` to multiples of ``multiple`` (reflect, or
    replicate when the image is too small to reflect)."""
    h, w = lr.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not (ph or pw):
        return lr
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(lr, (0, pw, 0, ph), mode=mode)


__all__ = [
    "FUSION_MODES",
    "LAYOUTS",
    "PRESETS",
    "TOP_KS",
    "UGTSR",
    "UGTSRConfig",
    "UGTSROutput",
    "UncertaintyHead",
    "pad_lr",
]
