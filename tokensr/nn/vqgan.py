"""VQGAN tokenizer: encoder -> quantizer -> decoder (taming-transformers layout).

Images are in [-1, 1] inside the network (or [0, 1] with ``unit_range``, RealSRT's released
tokenizer); ``to_net``/``from_net`` convert from and to [0, 1]. The token grid is ``H / f``
by ``W / f`` with ``f = 2 ** (len(ch_mult) - 1)``.

The decoder is written as explicit stages (``conv_in``, ``mid``, ``up[i]``, ``norm_out``,
``conv_out``) so methods that inject features into it (UGTSR's multi-scale fusion,
RealSRT's conditional controlling module) can walk the same stages.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import ClassVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from tokensr.nn.blocks import AttnBlock, Downsample, ResnetBlock, Upsample, group_norm
from tokensr.nn.quantizer import QuantizerOutput, VectorQuantizer
from tokensr.nn.swin import SwinStack
from tokensr.pretrained import PretrainedMixin


@dataclass
class VQGANConfig:
    in_channels: int = 3
    ch: int = 128  # base channels
    ch_mult: tuple[int, ...] = (1, 1, 2, 2)  # one level per entry; f = 2 ** (levels - 1)
    num_res_blocks: int = 2  # encoder blocks per level (decoder uses one more)
    attn_levels: tuple[int, ...] = ()  # levels (0 = full resolution) with self-attention
    mid_attention: bool = True  # self-attention in the bottleneck
    code_dim: int = 256
    codebook_size: int = 512
    beta: float = 0.25
    ema: bool = True
    ema_decay: float = 0.99
    dropout: float = 0.0
    # at least this many channels per GroupNorm group (1 = taming's GN32 everywhere; see
    # tokensr.nn.blocks.group_norm for why narrow models need more)
    min_group_channels: int = 1
    # ITER's Swin-VQGAN (the defaults keep the taming layout above):
    mid_swin_dim: int = 0  # > 0: a SwinStack of this width replaces the bottleneck attention
    mid_swin_groups: int = 1  # its residual Swin groups
    mid_swin_depth: int = 6  # Swin blocks per group
    mid_swin_heads: int = 8
    mid_swin_window: int = 8
    decoder_res_blocks: int | None = None  # decoder blocks per level (None: num_res_blocks + 1)
    # the decoder's base channels (None: ch). A narrower decoder than the encoder is distilled
    # from a full-width one (tokensr.methods.realsrt.distill), for speed
    decoder_ch: int | None = None
    out_act: bool = True  # swish before the encoder's and the decoder's output conv
    quant_convs: bool = True  # 1x1 convs before and after the quantizer
    # images inside the network: False = [-1, 1] (taming), True = [0, 1] as given (RealSRT's
    # released tokenizer); VQGAN.to_net / from_net convert
    unit_range: bool = False

    @property
    def factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


# Named presets. `paper` follows RealSRT's public tokenizer; `small` is sized for CPU training.
PRESETS: dict[str, VQGANConfig] = {
    # Layer for layer the tokenizer of RealSRT's released model: no self-attention anywhere,
    # two residual blocks per level in the decoder too, images in [0, 1].
    "paper": VQGANConfig(
        ch=128,
        ch_mult=(1, 1, 2, 2),
        num_res_blocks=2,
        attn_levels=(),
        mid_attention=False,
        code_dim=256,
        codebook_size=512,
        decoder_res_blocks=2,
        unit_range=True,
    ),
    "small": VQGANConfig(
        ch=32,
        ch_mult=(1, 2, 4),
        num_res_blocks=1,
        attn_levels=(),
        mid_attention=False,
        code_dim=64,
        codebook_size=1024,
        min_group_channels=8,
    ),
    # ITER's Swin-VQGAN (chaofengc/ITER): f=8, K=512 codes of dim 128, one Swin stage (256 wide,
    # 6 blocks, window 8) in each bottleneck, two decoder blocks per level, no quant convs, no
    # swish before the output convs, a learned (non-EMA) codebook.
    "iter": VQGANConfig(
        ch=128,
        ch_mult=(1, 2, 2, 4),
        num_res_blocks=2,
        attn_levels=(),
        mid_attention=False,
        code_dim=128,
        codebook_size=512,
        ema=False,
        mid_swin_dim=256,
        decoder_res_blocks=2,
        out_act=False,
        quant_convs=False,
    ),
}


def _mid_global(cfg: VQGANConfig, channels: int) -> nn.Module:
    """The bottleneck's global block between its two ResNet blocks: attention, ITER's Swin stage or nothing."""
    if cfg.mid_swin_dim > 0:
        if cfg.mid_attention:
            raise ValueError("mid_attention and mid_swin_dim > 0 both ask for the bottleneck block: choose one")
        return SwinStack(
            channels,
            cfg.mid_swin_dim,
            cfg.mid_swin_groups,
            cfg.mid_swin_depth,
            cfg.mid_swin_heads,
            cfg.mid_swin_window,
        )
    return AttnBlock(channels, cfg.min_group_channels) if cfg.mid_attention else nn.Identity()


class Encoder(nn.Module):
    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        chs = [cfg.ch * m for m in cfg.ch_mult]
        g = cfg.min_group_channels
        self.conv_in = nn.Conv2d(cfg.in_channels, chs[0], 3, padding=1)
        self.down = nn.ModuleList()
        c_in = chs[0]
        for level, c_out in enumerate(chs):
            stage = nn.Module()
            stage.blocks = nn.ModuleList()
            stage.attn = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                stage.blocks.append(ResnetBlock(c_in, c_out, cfg.dropout, g))
                stage.attn.append(AttnBlock(c_out, g) if level in cfg.attn_levels else nn.Identity())
                c_in = c_out
            stage.downsample = Downsample(c_out) if level < len(chs) - 1 else nn.Identity()
            self.down.append(stage)
        self.mid = nn.Sequential(
            ResnetBlock(c_in, c_in, cfg.dropout, g),
            _mid_global(cfg, c_in),
            ResnetBlock(c_in, c_in, cfg.dropout, g),
        )
        self.norm_out = group_norm(c_in, min_group_channels=g)
        self.conv_out = nn.Conv2d(c_in, cfg.code_dim, 3, padding=1)
        self.out_channels = c_in
        self.out_act = cfg.out_act

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Bottleneck features before the output projection, ``[B, ch*ch_mult[-1], H/f, W/f]``."""
        h = self.conv_in(x)
        for stage in self.down:
            blocks, attns = cast(nn.ModuleList, stage.blocks), cast(nn.ModuleList, stage.attn)
            for block, attn in zip(blocks, attns, strict=False):
                h = attn(block(h))
            h = cast(nn.Module, stage.downsample)(h)
        return self.mid(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm_out(self.features(x))
        return self.conv_out(F.silu(h) if self.out_act else h)


class Decoder(nn.Module):
    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        chs = [(cfg.decoder_ch or cfg.ch) * m for m in cfg.ch_mult]
        c = chs[-1]
        g = cfg.min_group_channels
        self.conv_in = nn.Conv2d(cfg.code_dim, c, 3, padding=1)
        self.mid = nn.Sequential(
            ResnetBlock(c, c, cfg.dropout, g),
            _mid_global(cfg, c),
            ResnetBlock(c, c, cfg.dropout, g),
        )
        n_blocks = cfg.num_res_blocks + 1 if cfg.decoder_res_blocks is None else cfg.decoder_res_blocks
        # up[0] works at the lowest resolution, up[-1] at full resolution.
        self.up = nn.ModuleList()
        for level in reversed(range(len(chs))):
            stage = nn.Module()
            stage.blocks = nn.ModuleList()
            stage.attn = nn.ModuleList()
            for _ in range(n_blocks):
                stage.blocks.append(ResnetBlock(c, chs[level], cfg.dropout, g))
                stage.attn.append(AttnBlock(chs[level], g) if level in cfg.attn_levels else nn.Identity())
                c = chs[level]
            stage.upsample = Upsample(c) if level > 0 else nn.Identity()
            self.up.append(stage)
        self.norm_out = group_norm(c, min_group_channels=g)
        self.conv_out = nn.Conv2d(c, cfg.in_channels, 3, padding=1)
        self.out_act = cfg.out_act

    def run_stage(self, i: int, h: torch.Tensor) -> torch.Tensor:
        stage = self.up[i]
        blocks, attns = cast(nn.ModuleList, stage.blocks), cast(nn.ModuleList, stage.attn)
        for block, attn in zip(blocks, attns, strict=False):
            h = attn(block(h))
        return cast(nn.Module, stage.upsample)(h)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for i in range(len(self.up)):
            h = self.run_stage(i, h)
        h = self.norm_out(h)
        return self.conv_out(F.silu(h) if self.out_act else h)


@dataclass
class VQGANOutput:
    recon: torch.Tensor  # [-1, 1]
    quant: QuantizerOutput
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class TokenizerMixin:
    """The tokenizer vocabulary every method uses, built from what a tokenizer class defines
    (``encode_continuous``, ``decode``, ``quantizer``, ``factor``, and ``to_net``/``from_net``
    when its network does not take images in [0, 1]): quantize (``encode``), decode a token map
    (``decode_indices``), encode-quantize-decode (``forward``), and the [0, 1] helpers
    ``tokenize`` and ``reconstruct``. :class:`VQGAN` and FeMaSR's prior share it."""

    quantizer: VectorQuantizer

    @property
    def factor(self) -> int:
        raise NotImplementedError

    def encode_continuous(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def to_net(self, img01: torch.Tensor) -> torch.Tensor:
        """An image in [0, 1] in the network's range (here: as it is)."""
        return img01

    def from_net(self, x: torch.Tensor) -> torch.Tensor:
        """A decoder output back on the [0, 1] scale, not clamped (here: as it is)."""
        return x

    def encode(self, x: torch.Tensor) -> QuantizerOutput:
        """Quantize an image in the network's range; codes, indices and the VQ loss."""
        return self.quantizer(self.encode_continuous(x))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Decode a token map ``[B, h, w]`` to an image in the network's range."""
        return self.decode(self.quantizer.lookup(indices))

    def forward(self, x: torch.Tensor) -> VQGANOutput:
        q = self.encode(x)
        return VQGANOutput(self.decode(q.z_q), q)

    @torch.no_grad()
    def tokenize(self, img01: torch.Tensor, exact: bool = True) -> torch.Tensor:
        """Token indices ``[B, H/f, W/f]`` of an image in [0, 1] (H, W multiples of f): the
        nearest code of each encoder output. The one way every method turns an HR image into
        its ground-truth tokens: in float32 (under autocast too, since nearest-code search
        in bf16/fp16 picks other codes), and never an EMA codebook update, in any mode.

        ``exact=False`` lets the encoder's convolutions follow an enclosing autocast (bf16 on a
        CPU with native bfloat16: about 1.6x faster); the nearest-code search stays float32.
        Codes whose two nearest entries are almost tied can then differ (1.6 % of the LR tokens
        of the bundled RealSRT on its validation split). Without autocast both are the same."""
        # exact: autocast off inside; otherwise whatever the caller set stays in force
        with torch.autocast(device_type=img01.device.type, enabled=False) if exact else contextlib.nullcontext():
            z = self.encode_continuous(self.to_net(img01.float()))
        b, c, h, w = z.shape
        return self.quantizer.nearest(z.permute(0, 2, 3, 1).reshape(-1, c)).view(b, h, w)

    @torch.no_grad()
    def reconstruct(self, img01: torch.Tensor) -> torch.Tensor:
        """Encode-quantize-decode an image in [0, 1], padding to a multiple of f."""
        h, w = img01.shape[-2:]
        f = self.factor
        ph, pw = (-h) % f, (-w) % f
        x = F.pad(self.to_net(img01), (0, pw, 0, ph), mode="replicate") if ph or pw else self.to_net(img01)
        out = cast(nn.Module, self)(x).recon[..., :h, :w]  # the module call (hooks included)
        return self.from_net(out).clamp(0, 1)


class VQGAN(TokenizerMixin, nn.Module, PretrainedMixin):
    config_class: ClassVar[type] = VQGANConfig
    model_type: ClassVar[str] = "vqgan"

    def __init__(self, config: VQGANConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quant_conv: nn.Module = (
            nn.Conv2d(config.code_dim, config.code_dim, 1) if config.quant_convs else nn.Identity()
        )
        self.quantizer = VectorQuantizer(
            config.codebook_size, config.code_dim, beta=config.beta, ema=config.ema, decay=config.ema_decay
        )
        self.post_quant_conv: nn.Module = (
            nn.Conv2d(config.code_dim, config.code_dim, 1) if config.quant_convs else nn.Identity()
        )
        self.decoder = Decoder(config)

    @property
    def factor(self) -> int:
        return self.config.factor

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the final decoder conv, for the adaptive GAN weight."""
        return self.decoder.conv_out.weight

    def encode_continuous(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-quantization latents ``[B, code_dim, H/f, W/f]`` for an image in [-1, 1]."""
        return self.quant_conv(self.encoder(x))

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z_q))

    # --- [0, 1] image helpers -------------------------------------------------------------
    def to_net(self, img01: torch.Tensor) -> torch.Tensor:
        """An image in [0, 1] in the network's range ([-1, 1], or as it is with ``unit_range``)."""
        return img01 if self.config.unit_range else img01 * 2 - 1

    def from_net(self, x: torch.Tensor) -> torch.Tensor:
        """A decoder output back on the [0, 1] scale (not clamped)."""
        return x if self.config.unit_range else (x + 1) / 2
