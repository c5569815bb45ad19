"""UGTSR networks (Wen et al., "Incorporating Uncertainty-Guided and Top-k Codebook Matching for
Real-World Blind Image Super-Resolution"): a FeMaSR-style codebook-matching SR network on the
project's frozen VQGAN, with Top-k matching, Align-Attention and an uncertainty head.

Data flow for an LR batch ``y`` in [0, 1] (``s`` = SR scale, ``f`` = tokenizer factor)::

    y -> LQEncoder ------------------------------> feat [B, swin_dim, sH/f, sW/f]
                                                    z    [B, code_dim, sH/f, sW/f]   (z^l)
    z -> k nearest codes Z_k1..Z_kk --TopKFusion--> z'   (k > 1; z' = z when k = 1)
    z' -> nearest code Z_p (straight-through) -----> z_q
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

:class:`UGTSR` keeps the tokenizer inside (``tokenizer.`` prefix of one safetensors file,
``model_type "ugtsr"``); the tokenizer stays frozen and in eval mode.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from tokensr.nn.blocks import Downsample, ResnetBlock, Upsample, group_norm
from tokensr.nn.swin import SwinGroup, window_merge, window_partition
from tokensr.nn.vqgan import VQGAN, VQGANConfig
from tokensr.pretrained import WEIGHTS_NAME, PretrainedMixin, config_from_dict, read_config, resolve

TOP_KS = (1, 3, 5)  # the paper's choices; any k >= 1 works


@dataclass
class UGTSRConfig:
    """Sizes and switches of a UGTSR model (defaults = the ``small`` preset, x4)."""

    scale: int = 4
    tokenizer: dict[str, Any] = field(default_factory=dict)  # VQGANConfig as a dict
    # LQ encoder
    enc_ch: int = 48  # channels at LR resolution
    enc_ch_max: int = 96  # channels double at each downsampling up to this
    enc_res_blocks: int = 1  # ResNet blocks per resolution
    swin_dim: int = 96
    swin_groups: int = 2
    swin_depth: int = 2
    swin_heads: int = 4
    swin_window: int = 8
    # decoder fusion of LQ features: decoder stages (1 .. L-1) that receive them; None = the
    # intermediate resolutions 1 .. L-2 (FeMaSR fuses between the code grid and full resolution)
    fusion_stages: tuple[int, ...] | None = None
    # Top-k matching (k = 1: plain nearest-neighbour matching, no fusion module)
    top_k: int = 3
    fusion_dim: int = 96
    fusion_heads: int = 4
    fusion_blocks: int = 1
    fusion_ffn: float = 2.0  # GDFN expansion
    fusion_with_lq: bool = False  # also feed z^l to the fusion (the paper fuses the k codes only)
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


# Named sizes (every field except scale/tokenizer). `paper` follows FeMaSR's LQ network
# (256 channels at <= 64 px, 4 Swin groups of depth 6, 8 heads, window 8); `small` trains on
# CPU with the f=4 `vqgan-small` tokenizer; `tiny` is for tests.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(
        enc_ch=256, enc_ch_max=256, enc_res_blocks=2, swin_dim=256, swin_groups=4, swin_depth=6,
        swin_heads=8, swin_window=8, fusion_dim=256, fusion_heads=8, fusion_blocks=1, align_dim=256,
        align_heads=8, align_window=8, uncertainty_hidden=64,
    ),
    "small": dict(
        enc_ch=48, enc_ch_max=96, enc_res_blocks=1, swin_dim=96, swin_groups=2, swin_depth=2,
        swin_heads=4, swin_window=8, fusion_dim=96, fusion_heads=4, fusion_blocks=1, align_dim=96,
        align_heads=4, align_window=8, uncertainty_hidden=32,
    ),
    "tiny": dict(
        enc_ch=8, enc_ch_max=16, enc_res_blocks=1, swin_dim=16, swin_groups=1, swin_depth=2,
        swin_heads=2, swin_window=4, fusion_dim=16, fusion_heads=2, fusion_blocks=1, align_dim=16,
        align_heads=2, align_window=4, uncertainty_hidden=8,
    ),
}


def _log2_ratio(a: int, b: int) -> int:
    """``log2(a / b)`` for ``a >= b`` powers-of-two apart; ValueError otherwise."""
    if a % b or (a // b) & (a // b - 1):
        raise ValueError(f"{a} / {b} is not a power of two")
    return int(math.log2(a // b))


def zero_module(m: nn.Module) -> nn.Module:
    """Zero every parameter of ``m`` (its output starts at 0; gradients still flow)."""
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


# --- code matching ----------------------------------------------------------------------------
@torch.no_grad()
def knn_codes(z: torch.Tensor, codebook: torch.Tensor, k: int, chunk: int = 16384) -> torch.Tensor:
    """Indices ``[B, k, H, W]`` of the ``k`` codes nearest (Euclidean) to each vector of
    ``z [B, C, H, W]``, nearest first. Distances are computed in float32, ``chunk`` rows at a
    time so large images do not build an N x K matrix at once."""
    b, c, h, w = z.shape
    if not 1 <= k <= codebook.shape[0]:
        raise ValueError(f"k = {k} must be between 1 and the codebook size {codebook.shape[0]}")
    flat = z.detach().float().permute(0, 2, 3, 1).reshape(-1, c)
    codes = codebook.detach().float()
    c2 = codes.pow(2).sum(1)[None, :]
    out = []
    for start in range(0, flat.shape[0], chunk):
        rows = flat[start : start + chunk]
        d = rows.pow(2).sum(1, keepdim=True) - 2.0 * rows @ codes.t() + c2
        out.append(torch.topk(d, k, dim=1, largest=False, sorted=True).indices)
    idx = torch.cat(out) if out else flat.new_zeros((0, k), dtype=torch.long)
    return idx.view(b, h, w, k).permute(0, 3, 1, 2).contiguous()


def gather_codes(codebook: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Code vectors for ``idx [B, k, H, W]`` as ``[B, k, C, H, W]``."""
    return codebook[idx].permute(0, 1, 4, 2, 3).contiguous()


# --- Restormer-style fusion of the k candidate codes ------------------------------------------
class ChannelNorm(nn.Module):
    """LayerNorm over the channels of ``[B, C, H, W]`` at every pixel (with bias)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class TransposedAttention(nn.Module):
    """Restormer's multi-Dconv head transposed attention: 1x1 + depthwise 3x3 convs make
    Q, K, V; attention is across *channels* (a ``C/heads`` square map per head, with
    L2-normalised Q/K and a learned temperature), so its cost is linear in the pixel count."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"fusion_dim {dim} is not divisible by fusion_heads {heads}")
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1)
        self.qkv_dw = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv_dw(self.qkv(x)).chunk(3, dim=1)
        q, k, v = (t.reshape(b, self.heads, c // self.heads, h * w) for t in (q, k, v))
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1) * self.temperature).softmax(dim=-1)
        return self.proj((attn @ v).reshape(b, c, h, w))


class GatedDconvFFN(nn.Module):
    """Restormer's gated feed-forward: 1x1 up, depthwise 3x3, GELU gate, 1x1 down."""

    def __init__(self, dim: int, expansion: float) -> None:
        super().__init__()
        hidden = max(1, int(dim * expansion))
        self.up = nn.Conv2d(dim, hidden * 2, 1)
        self.dw = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2)
        self.down = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.dw(self.up(x)).chunk(2, dim=1)
        return self.down(F.gelu(a) * b)


class RestormerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, expansion: float) -> None:
        super().__init__()
        self.norm1 = ChannelNorm(dim)
        self.attn = TransposedAttention(dim, heads)
        self.norm2 = ChannelNorm(dim)
        self.ffn = GatedDconvFFN(dim, expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class TopKFusion(nn.Module):
    """Fuse the k nearest codes of every LQ feature into one refined feature (eq. 7).

    The k candidate vectors (nearest first) are stacked on the channel axis (optionally with
    the LQ feature itself), projected to ``dim``, passed through Restormer blocks and
    projected back to ``code_dim``. The result is the nearest candidate plus a learned,
    zero-initialised correction, so an untrained fusion reproduces nearest-neighbour matching.
    """

    def __init__(self, code_dim: int, k: int, dim: int, heads: int, blocks: int, expansion: float,
                 with_lq: bool = False) -> None:
        super().__init__()
        self.k = k
        self.with_lq = with_lq
        self.inp = nn.Conv2d(code_dim * (k + int(with_lq)), dim, 1)
        self.blocks = nn.Sequential(*(RestormerBlock(dim, heads, expansion) for _ in range(blocks)))
        self.out = zero_module(nn.Conv2d(dim, code_dim, 1))

    def forward(self, candidates: torch.Tensor, z_lq: torch.Tensor | None = None) -> torch.Tensor:
        """``candidates [B, k, C, H, W]`` (nearest first) -> fused ``[B, C, H, W]``."""
        if candidates.shape[1] != self.k:
            raise ValueError(f"the fusion was built for k = {self.k}, got {candidates.shape[1]} candidates")
        x = candidates.flatten(1, 2)
        if self.with_lq:
            if z_lq is None:
                raise ValueError("this fusion also needs the LQ feature")
            x = torch.cat([x, z_lq], dim=1)
        return candidates[:, 0] + self.out(self.blocks(self.inp(x)))


# --- Align-Attention ---------------------------------------------------------------------------
class AlignAttention(nn.Module):
    """Cross-attention with LQ features as the query and HQ features as key and value (eq. 9)::

        F_align = softmax((F_LQ W_Q)(F_HQ W_K)^T / sqrt(d_k)) (F_HQ W_V)

    computed with ``heads`` heads inside non-overlapping ``window x window`` windows (any map
    size: padded positions are masked out of the keys and cropped from the output), after a
    LayerNorm of each input. The output projection is zero-initialised.
    """

    def __init__(self, q_dim: int, kv_dim: int, out_dim: int, dim: int, heads: int, window: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"align_dim {dim} is not divisible by align_heads {heads}")
        self.heads, self.window = heads, window
        self.norm_q = nn.LayerNorm(q_dim)
        self.norm_kv = nn.LayerNorm(kv_dim)
        self.to_q = nn.Linear(q_dim, dim)
        self.to_k = nn.Linear(kv_dim, dim)
        self.to_v = nn.Linear(kv_dim, dim)
        self.proj = zero_module(nn.Linear(dim, out_dim))

    def forward(self, lq: torch.Tensor, hq: torch.Tensor) -> torch.Tensor:
        """``lq [B, Cq, H, W]`` (query), ``hq [B, Ckv, H, W]`` (key/value) -> ``[B, out_dim, H, W]``."""
        b, _, h, w = lq.shape
        if hq.shape[0] != b or hq.shape[-2:] != (h, w):
            raise ValueError(f"query {tuple(lq.shape)} and key/value {tuple(hq.shape)} maps differ in size")
        ws = self.window
        ph, pw = (-h) % ws, (-w) % ws
        q_in = F.pad(lq, (0, pw, 0, ph)).permute(0, 2, 3, 1)
        kv_in = F.pad(hq, (0, pw, 0, ph)).permute(0, 2, 3, 1)
        H, W = h + ph, w + pw
        q_win = window_partition(q_in, ws)  # [B*nW, n, Cq]
        kv_win = window_partition(kv_in, ws)
        q = self.to_q(self.norm_q(q_win))
        kv = self.norm_kv(kv_win)
        k, v = self.to_k(kv), self.to_v(kv)
        bw, n, d = q.shape
        q, k, v = (t.view(bw, n, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        mask = None
        if ph or pw:
            valid = F.pad(torch.ones(1, h, w, 1, device=lq.device), (0, 0, 0, pw, 0, ph))
            keep = window_partition(valid, ws)[..., 0] > 0.5  # [nW, n]
            mask = keep.repeat(b, 1)[:, None, None, :]  # [B*nW, 1, 1, n]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = self.proj(out.transpose(1, 2).reshape(bw, n, d))
        out = window_merge(out, ws, b, H, W)[:, :h, :w]
        return out.permute(0, 3, 1, 2).contiguous()


# --- LQ encoder, LQ pyramid, uncertainty head --------------------------------------------------
class LQEncoder(nn.Module):
    """LR image ([-1, 1]) -> token-grid features ``feat`` and code-space features ``z`` (z^l)."""

    def __init__(self, c: UGTSRConfig, code_dim: int, factor: int, scale: int) -> None:
        super().__init__()
        ch = c.enc_ch
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        layers: list[nn.Module] = [ResnetBlock(ch, ch) for _ in range(c.enc_res_blocks)]
        if factor >= scale:
            self.n_down, self.n_up = _log2_ratio(factor, scale), 0
            for _ in range(self.n_down):
                out = min(ch * 2, c.enc_ch_max)
                layers += [Downsample(ch), ResnetBlock(ch, out)]
                layers += [ResnetBlock(out, out) for _ in range(c.enc_res_blocks - 1)]
                ch = out
        else:
            self.n_down, self.n_up = 0, _log2_ratio(scale, factor)
            for _ in range(self.n_up):
                layers += [Upsample(ch), ResnetBlock(ch, ch)]
        self.body = nn.Sequential(*layers)
        self.to_swin = nn.Conv2d(ch, c.swin_dim, 3, padding=1)
        self.swin = nn.Sequential(
            *(SwinGroup(c.swin_dim, c.swin_depth, c.swin_heads, c.swin_window) for _ in range(c.swin_groups))
        )
        self.norm_out = group_norm(c.swin_dim)
        self.to_code = nn.Conv2d(c.swin_dim, code_dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.swin(self.to_swin(self.body(self.conv_in(x))))
        return feat, self.to_code(F.silu(self.norm_out(feat)))

    @torch.no_grad()
    def bridge(self, copied: set[str], source: dict[str, torch.Tensor], prefix: str = "") -> list[str]:
        """Function-preserving start for body layers that a warm start left fresh after the copied
        ones (an x2 encoder started from an x4 one has one more downsampling).

        Each fresh :class:`Downsample` becomes a 2x2 average pool; each fresh ResNet block becomes
        the identity, its residual branch zeroed and a widening skip set to ``[I; 0]``; a fresh
        ``to_swin`` that is wider than the source's takes the source's weights on its first input
        channels. The x2 encoder then computes the x4 encoder with an average pool after its
        LR-resolution blocks. The remaining ``to_swin`` weights keep their random start (they
        read channels that are zero at first, so the function is unchanged, and they let those
        channels receive gradients). Returns the names of the parameters set here.
        """
        set_here: list[str] = []
        layers = list(self.body)
        body = f"{prefix}body."
        copied_layers = {int(k[len(body):].split(".")[0]) for k in copied if k.startswith(body)}
        first_fresh = next((i for i in range(len(layers)) if i not in copied_layers), len(layers))
        if first_fresh == 0 or any(i > first_fresh for i in copied_layers):
            return set_here  # nothing copied before the fresh layers, or copied ones after them
        for i in range(first_fresh, len(layers)):
            layer, name = layers[i], f"{prefix}body.{i}."
            if isinstance(layer, Downsample):
                w = layer.conv.weight
                w.zero_()
                eye = torch.eye(w.shape[0], dtype=w.dtype, device=w.device)
                w[:, :, :2, :2] = 0.25 * eye[:, :, None, None]
                assert layer.conv.bias is not None
                layer.conv.bias.zero_()
                set_here += [name + "conv.weight", name + "conv.bias"]
            elif isinstance(layer, ResnetBlock):
                layer.conv2.weight.zero_()
                layer.conv2.bias.zero_()
                set_here += [name + "conv2.weight", name + "conv2.bias"]
                if isinstance(layer.skip, nn.Conv2d):
                    out_ch, in_ch = layer.skip.weight.shape[:2]
                    layer.skip.weight.zero_()
                    layer.skip.weight[:in_ch, :, 0, 0] = torch.eye(in_ch, dtype=layer.skip.weight.dtype,
                                                                   device=layer.skip.weight.device)
                    assert layer.skip.bias is not None and out_ch >= in_ch
                    layer.skip.bias.zero_()
                    set_here += [name + "skip.weight", name + "skip.bias"]
            else:  # an upsampling or other layer: no identity start known; leave the bridge here
                return set_here
        key = f"{prefix}to_swin.weight"
        src = source.get(key)
        w = self.to_swin.weight
        if key not in copied and src is not None and src.shape[0] == w.shape[0] and src.shape[2:] == w.shape[2:] \
                and src.shape[1] < w.shape[1]:
            w[:, : src.shape[1]] = src.to(w)
            set_here.append(key)  # (its bias has the same shape, so the warm start copied it)
        return set_here


class LQPyramid(nn.Module):
    """Upsample the token-level LQ features to the input resolution of decoder stages
    ``1 .. max_stage`` (nearest x2 + conv, then a ResNet block to that stage's width)."""

    def __init__(self, in_dim: int, stage_channels: list[int], max_stage: int) -> None:
        super().__init__()
        self.steps = nn.ModuleList()
        ch = in_dim
        for j in range(1, max_stage + 1):
            out = stage_channels[j]
            self.steps.append(nn.Sequential(Upsample(ch), ResnetBlock(ch, out)))
            ch = out

    def forward(self, feat: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps for stages 1, 2, ... (index ``j - 1``)."""
        outs = []
        for step in self.steps:
            feat = step(feat)
            outs.append(feat)
        return outs


class UncertaintyHead(nn.Module):
    """The "variance" branch: final decoder features -> log-uncertainty ``s`` per HR pixel."""

    def __init__(self, in_ch: int, hidden: int, out_ch: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            group_norm(in_ch), nn.SiLU(), nn.Conv2d(in_ch, hidden, 3, padding=1), nn.SiLU(),
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


class UGTSR(nn.Module, PretrainedMixin):
    config_class: ClassVar[type] = UGTSRConfig
    model_type: ClassVar[str] = "ugtsr"

    def __init__(self, config: UGTSRConfig) -> None:
        super().__init__()
        self.config = c = config
        tok_cfg = config_from_dict(VQGANConfig, c.tokenizer)
        self.tokenizer = VQGAN(tok_cfg)
        self.tokenizer.requires_grad_(False)
        self.tokenizer.eval()
        f, K, C = tok_cfg.factor, tok_cfg.codebook_size, tok_cfg.code_dim
        if c.scale < 1:
            raise ValueError(f"scale must be >= 1, got {c.scale}")
        if not 1 <= c.top_k <= K:
            raise ValueError(f"top_k = {c.top_k} must be between 1 and the codebook size {K}")
        if c.uncertainty_channels not in (1, 3):
            raise ValueError(f"uncertainty_channels must be 1 or 3, got {c.uncertainty_channels}")
        dec = self.tokenizer.decoder
        n_stages = len(dec.up)
        # input width of every decoder stage
        self.stage_channels = [int(dec.up[i].blocks[0].norm1.num_channels) for i in range(n_stages)]
        fusion = c.fusion_stages if c.fusion_stages is not None else tuple(range(1, n_stages - 1))
        self.fusion_stages = tuple(sorted(set(int(i) for i in fusion)))
        bad = [i for i in self.fusion_stages if not 1 <= i < n_stages]
        if bad:
            raise ValueError(f"fusion_stages {bad} out of range: this decoder has stages 1..{n_stages - 1}")
        self.align_stages = tuple(sorted(set(int(i) for i in c.align_stages))) if c.align_attention else ()
        bad = [i for i in self.align_stages if i != 0 and i not in self.fusion_stages]
        if bad:
            raise ValueError(f"align_stages {bad} must be 0 or one of the fusion_stages {self.fusion_stages}")

        self.encoder = LQEncoder(c, C, f, c.scale)
        self.pyramid = (
            LQPyramid(c.swin_dim, self.stage_channels, max(self.fusion_stages)) if self.fusion_stages else None
        )
        self.inject = nn.ModuleDict(
            {str(i): zero_module(nn.Conv2d(self.stage_channels[i], self.stage_channels[i], 1))
             for i in self.fusion_stages if i not in self.align_stages}
        )
        self.fusion = (
            TopKFusion(C, c.top_k, c.fusion_dim, c.fusion_heads, c.fusion_blocks, c.fusion_ffn, c.fusion_with_lq)
            if c.top_k > 1 else None
        )
        align: dict[str, nn.Module] = {}
        for i in self.align_stages:
            q_dim = c.swin_dim if i == 0 else self.stage_channels[i]
            kv_dim = C if i == 0 else self.stage_channels[i]
            align[str(i)] = AlignAttention(q_dim, kv_dim, self.stage_channels[i], c.align_dim, c.align_heads,
                                           c.align_window)
        self.align = nn.ModuleDict(align)
        out_ch = int(dec.norm_out.num_channels)
        self.uncertainty = (
            UncertaintyHead(out_ch, c.uncertainty_hidden, c.uncertainty_channels) if c.uncertainty_head else None
        )

    # --- construction -----------------------------------------------------------------------------
    @classmethod
    def create(cls, tokenizer: VQGAN, scale: int = 4, preset: str = "small", **overrides: Any) -> UGTSR:
        """A fresh (untrained) UGTSR around a trained tokenizer (its weights are copied in)."""
        if preset not in PRESETS:
            raise ValueError(f"unknown ugtsr preset '{preset}' (choose from {', '.join(PRESETS)})")
        names = {f.name for f in dataclasses.fields(UGTSRConfig)} - {"scale", "tokenizer"}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown ugtsr model field(s): {', '.join(unknown)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in {**PRESETS[preset], **overrides}.items()}
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
        if any(k not in saved or saved[k].shape != v.shape or not torch.equal(saved[k].to(v), v)
               for k, v in state.items() if k.startswith("tokenizer.")):
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
        return 2 ** self.encoder.n_down

    def train(self, mode: bool = True) -> UGTSR:
        """The frozen tokenizer always stays in eval mode (its EMA codebook must never move)."""
        super().train(mode)
        self.tokenizer.eval()
        return self

    def trainable_modules(self) -> dict[str, nn.Module]:
        """The modules UGTSR adds around the tokenizer, by name (``None`` ones left out)."""
        mods = {"encoder": self.encoder, "inject": self.inject, "align": self.align}
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
            raise ValueError(f"this model was trained with top_k={self.config.top_k}; it can run with k = "
                             f"{self.config.top_k} or 1, not {k}")
        return k

    def match(self, z: torch.Tensor, top_k: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Top-k matching of LQ features ``z`` (eqs. 6-8).

        Returns ``(z_q, z_fused, indices, candidates)``: ``z_q`` is the matched code with a
        straight-through gradient to ``z_fused`` (k > 1) or ``z`` (k = 1).
        """
        k = self.resolve_top_k(top_k)
        codebook = self.codebook
        candidates = knn_codes(z, codebook, k)
        if k > 1:
            assert self.fusion is not None
            fused: torch.Tensor | None = self.fusion(gather_codes(codebook, candidates).to(z.dtype), z)
            target = fused
            indices = knn_codes(fused, codebook, 1)[:, 0]
        else:
            fused, target, indices = None, z, candidates[:, 0]
        hard = self.tokenizer.quantizer.lookup(indices).to(z.dtype)
        return target + (hard - target).detach(), fused, indices, candidates

    def decode(self, z_q: torch.Tensor, indices: torch.Tensor, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Walk the frozen decoder with LQ fusion; returns (image in [-1, 1], final features)."""
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
        return dec.conv_out(F.silu(dec.norm_out(h))), h

    def forward(self, lr01: torch.Tensor, top_k: int | None = None, with_uncertainty: bool = False) -> UGTSROutput:
        """One LR batch in [0, 1] (sides multiples of :attr:`pad_multiple`) -> :class:`UGTSROutput`."""
        m = self.pad_multiple
        if lr01.shape[-2] % m or lr01.shape[-1] % m:
            raise ValueError(f"LR size {tuple(lr01.shape[-2:])} is not a multiple of {m} (pad it first)")
        feat, z = self.encoder(lr01 * 2 - 1)
        z_q, fused, indices, candidates = self.match(z, top_k)
        out, h = self.decode(z_q, indices, feat)
        s = None
        if with_uncertainty:
            if self.uncertainty is None:
                raise ValueError("this UGTSR model has no uncertainty head")
            s = self.uncertainty(h)
        return UGTSROutput((out + 1) / 2, z, fused, indices, candidates, s)

    @torch.no_grad()
    def upscale(self, lr01: torch.Tensor, top_k: int | None = None) -> torch.Tensor:
        """LR batch of any size -> SR image in [0, 1] of exactly ``scale`` times its size."""
        h, w = lr01.shape[-2:]
        out = self(pad_lr(lr01, self.pad_multiple), top_k).image
        return out[..., : h * self.scale, : w * self.scale].clamp(0, 1)

    @torch.no_grad()
    def gt_indices(self, hr01: torch.Tensor) -> torch.Tensor:
        """The HR image's own codes ``[B, H/f, W/f]`` (the tokenizer's nearest-code matching),
        computed in float32 even under autocast so mixed precision cannot change the targets."""
        with torch.autocast(device_type=hr01.device.type, enabled=False):
            z = self.tokenizer.encode_continuous(hr01.float() * 2 - 1)
        return knn_codes(z, self.codebook, 1)[:, 0]


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
    "PRESETS", "TOP_KS", "AlignAttention", "LQEncoder", "TopKFusion", "UGTSR", "UGTSRConfig", "UGTSROutput",
    "UncertaintyHead", "gather_codes", "knn_codes", "pad_lr",
]
