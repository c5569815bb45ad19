"""RealSRT networks: the token transformer (generator / critic) and the whole model.

:class:`TokenTransformer` (paper sec. 3.2, fig. 2 bottom) has two streams:

- the **LR stream**: LR tokens (the bicubic-upsampled LR image tokenised by the frozen VQGAN)
  -> frozen codebook embedding -> linear -> + 2D sin-cos positions -> ``lr_depth``
  self-attention blocks -> LayerNorm;
- the **HR stream**: HR tokens -> the same kind of frozen codebook embedding -> linear
  (masked positions replaced by a learned mask token in the generator) -> + positions ->
  ``hr_depth`` blocks of self-attention, cross-attention to the LR stream and GEGLU MLP ->
  LayerNorm -> linear head with ``K`` logits (generator) or one logit (critic).

As in the paper and the reference code, the LR stream is the *quantized* LR tokens
(``lr_input="tokens"``), so the transformer sees only codebook entries. ``lr_input="latents"``
feeds the pre-quantization encoder latents instead (same width, no rounding to codes); it is
offered for experiments and is not what the paper does.

:class:`RealSRT` bundles the tokenizer, the generator, the critic and the CCM into one
``save_pretrained`` folder (``model_type "realsrt"``; the tokenizer weights sit under the
``tokenizer.`` prefix). Training fills it in stages: generator, then critic, then CCM; the
critic and CCM entries of the config are ``null`` until their stage has run.

The ``paper`` presets follow the authors' released model layer for layer, so
``tokensr convert`` can load their checkpoint (``tokensr/convert/realsrt.py``): a tokenizer
working on [0, 1] images (``VQGANConfig.unit_range``), sin-cos positions with the column half
first (``pos_cols_first``) and an LR upsampling that is not clamped (``clamp_lr_up=False``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from tokensr.inference.grid_tiles import map_in_tiles
from tokensr.methods.realsrt.ccm import CCM, CCMConfig
from tokensr.methods.realsrt.sampling import GenerationResult, iterative_generate
from tokensr.nn.transformer import TransformerBlock, sincos_2d
from tokensr.nn.vqgan import VQGAN, VQGANConfig
from tokensr.pretrained import PretrainedMixin, config_from_dict

# per HR block: the cross-attention's keys and values of one LR context (TokenTransformer.context_kv)
ContextKV = list[tuple[torch.Tensor, torch.Tensor]]

LR_INPUTS = ("tokens", "latents")


@dataclass
class TokenTransformerConfig:
    codebook_size: int = 1024  # K; the mask id is K
    code_dim: int = 64  # width of the VQ codes (the embedding table)
    dim: int = 192
    heads: int = 6
    dim_head: int = 32
    lr_depth: int = 2  # self-attention blocks over the LR tokens
    hr_depth: int = 6  # self + cross-attention blocks over the HR tokens
    ff_mult: float = 4.0
    critic: bool = False  # one-logit head and no mask token
    pos_cols_first: bool = False  # column half of the sin-cos positions first (the authors' layout)


class TokenTransformer(nn.Module):
    """Bidirectional transformer over HR tokens, cross-attending to LR tokens."""

    codebook: torch.Tensor  # buffer [K, code_dim], registered in __init__

    def __init__(self, config: TokenTransformerConfig) -> None:
        super().__init__()
        self.config = c = config
        self.mask_id = c.codebook_size
        # A frozen copy of the VQGAN codebook is the embedding table (set by `load_codebook`).
        self.register_buffer("codebook", torch.zeros(c.codebook_size, c.code_dim))
        self.lr_in = nn.Linear(c.code_dim, c.dim)
        self.hr_in = nn.Linear(c.code_dim, c.dim)
        self.mask_token = None if c.critic else nn.Parameter(torch.randn(c.dim) * 0.02)
        self.lr_blocks = nn.ModuleList(
            TransformerBlock(c.dim, c.heads, c.dim_head, cross=False, ff_mult=c.ff_mult) for _ in range(c.lr_depth)
        )
        self.lr_norm = nn.LayerNorm(c.dim)
        self.hr_blocks = nn.ModuleList(
            TransformerBlock(c.dim, c.heads, c.dim_head, cross=True, ff_mult=c.ff_mult) for _ in range(c.hr_depth)
        )
        self.hr_norm = nn.LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, 1 if c.critic else c.codebook_size, bias=False)
        self._pos_cache: dict[tuple[int, int, str, torch.dtype], torch.Tensor] = {}

    @torch.no_grad()
    def load_codebook(self, codebook: torch.Tensor) -> None:
        if codebook.shape != self.codebook.shape:
            raise ValueError(f"codebook {tuple(codebook.shape)} does not fit {tuple(self.codebook.shape)}")
        self.codebook.copy_(codebook.detach())

    def positions(self, hw: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
        key = (hw[0], hw[1], str(like.device), like.dtype)
        pos = self._pos_cache.get(key)
        if pos is None:
            pos = sincos_2d(self.config.dim, hw[0], hw[1], self.config.pos_cols_first)
            pos = pos.to(device=like.device, dtype=like.dtype)
            self._pos_cache[key] = pos
        return pos

    def encode_lr(self, lr: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """The LR stream: token ids ``[B, N]`` or latents ``[B, N, code_dim]`` -> context ``[B, N, dim]``."""
        emb = F.embedding(lr, self.codebook) if lr.dtype == torch.long else lr.to(self.codebook.dtype)
        x = self.lr_in(emb)
        x = x + self.positions(hw, x)
        for block in self.lr_blocks:
            x = block(x)
        return self.lr_norm(x)

    def context_kv(self, context: torch.Tensor) -> ContextKV:
        """Each HR block's cross-attention keys and values for ``context`` (`encode_lr`'s
        output). Iterative decoding attends to the same context at every step, so it computes
        them once and passes them to `decode_hr` instead of the context: same logits, less work."""
        kv = []
        for block in self.hr_blocks:
            assert isinstance(block, TransformerBlock) and block.cross_attn is not None
            kv.append(block.cross_attn.keys_values(context))
        return kv

    def decode_hr(
        self,
        ids: torch.Tensor,
        context: torch.Tensor | ContextKV,
        hw: tuple[int, int],
        select: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The HR stream: ids ``[B, N]`` (mask id allowed in the generator) -> logits.

        context: `encode_lr`'s output, or its `context_kv`.
        With ``select`` (bool ``[B, N]``) only those positions go through the output head and
        the result is ``[M, ...]`` in row-major order (inference needs logits of masked tokens only).
        """
        masked = ids == self.mask_id
        x = self.hr_in(F.embedding(ids.clamp(max=self.mask_id - 1), self.codebook))
        if self.mask_token is not None:
            x = torch.where(masked[..., None], self.mask_token.to(x.dtype), x)
        x = x + self.positions(hw, x)
        for i, block in enumerate(self.hr_blocks):
            x = block(x, context) if isinstance(context, torch.Tensor) else block(x, context_kv=context[i])
        x = self.hr_norm(x)
        logits = self.head(x[select] if select is not None else x)
        return logits.squeeze(-1) if self.config.critic else logits

    def forward(
        self, ids: torch.Tensor, lr: torch.Tensor, hw: tuple[int, int], select: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits ``[B, N, K]`` (generator) or ``[B, N]`` (critic) for HR ids on an ``hw`` grid
        (``[M, ...]`` for the ``select``-ed positions only, see :meth:`decode_hr`)."""
        return self.decode_hr(ids, self.encode_lr(lr, hw), hw, select)


# --- presets -------------------------------------------------------------------------------
@dataclass
class Preset:
    """Transformer sizes and the LR patch; the tokenizer is chosen separately (paper: the
    ``paper`` VQGAN preset, f=8; small: the bundled ``vqgan-small``, f=4)."""

    generator: dict[str, Any]
    critic: dict[str, Any]
    lr_patch: int  # LR patch side used in training crops and inference patches
    stride: int | None = None  # default inference stride (None = lr_patch / 2, the paper's half overlap)
    clamp_lr_up: bool = True  # clamp the bicubic-upsampled LR to [0, 1] (the authors' code does not)


PRESETS: dict[str, Preset] = {
    # The paper (sec. 4.1) and the authors' released model: f=8, K=512, 64x64 LR -> 256x256
    # HR -> 32x32 tokens; 512-wide, 8 heads, 4 LR blocks, 16 (generator) / 12 (critic)
    # cross-attention blocks; their position layout and unclamped LR upsampling.
    "paper": Preset(
        dict(dim=512, heads=8, dim_head=64, lr_depth=4, hr_depth=16, ff_mult=4.0, pos_cols_first=True),
        dict(dim=512, heads=8, dim_head=64, lr_depth=4, hr_depth=12, ff_mult=4.0, pos_cols_first=True),
        lr_patch=64,
        clamp_lr_up=False,
    ),
    # CPU: f=4, K=1024, 32x32 LR -> 128x128 HR -> 32x32 tokens (the same N=1024); 128 wide,
    # generator 1 + 4 blocks, critic 1 + 2 blocks.
    "small": Preset(
        dict(dim=128, heads=4, dim_head=32, lr_depth=1, hr_depth=4, ff_mult=2.0),
        dict(dim=128, heads=4, dim_head=32, lr_depth=1, hr_depth=2, ff_mult=2.0),
        lr_patch=32,
        stride=24,  # a quarter overlap instead of half: ~2x fewer patches on CPU
    ),
    # tests only
    "tiny": Preset(
        dict(dim=32, heads=2, dim_head=16, lr_depth=1, hr_depth=1, ff_mult=2.0),
        dict(dim=32, heads=2, dim_head=16, lr_depth=1, hr_depth=1, ff_mult=2.0),
        lr_patch=8,
    ),
}


# --- the whole model -----------------------------------------------------------------------
@dataclass
class RealSRTConfig:
    scale: int = 4
    lr_patch: int = 32  # LR patch side; the token grid is lr_patch * scale / f
    stride: int | None = None  # default inference patch stride (None = lr_patch / 2)
    lr_input: str = "tokens"  # "tokens" (paper) or "latents"
    clamp_lr_up: bool = True  # clamp the bicubic-upsampled LR to [0, 1] (the authors' code does not)
    tokenizer: dict[str, Any] = field(default_factory=dict)  # VQGANConfig as a dict
    generator: dict[str, Any] = field(default_factory=dict)  # TokenTransformerConfig as a dict
    critic: dict[str, Any] | None = None
    ccm: dict[str, Any] | None = None  # CCMConfig as a dict
    # method options this model runs with unless others are given (``tokensr convert`` stores
    # the authors' inference settings here)
    defaults: dict[str, Any] = field(default_factory=dict)


@dataclass
class Condition:
    """Everything the transformer and the CCM need from an LR batch."""

    lr_up: torch.Tensor  # [B, 3, H, W] bicubic-upsampled LR in [0, 1]
    lr: torch.Tensor  # LR stream input: ids [B, N] or latents [B, N, code_dim]
    hw: tuple[int, int]  # token grid


class RealSRT(nn.Module, PretrainedMixin):
    config_class: ClassVar[type] = RealSRTConfig
    model_type: ClassVar[str] = "realsrt"

    def __init__(self, config: RealSRTConfig) -> None:
        super().__init__()
        if config.lr_input not in LR_INPUTS:
            raise ValueError(f"lr_input must be one of {LR_INPUTS}, got '{config.lr_input}'")
        self.config = config
        tok_cfg = config_from_dict(VQGANConfig, config.tokenizer)
        if (config.lr_patch * config.scale) % tok_cfg.factor:
            raise ValueError(
                f"lr_patch * scale = {config.lr_patch * config.scale} is not a multiple of "
                f"the tokenizer factor {tok_cfg.factor}"
            )
        self.tokenizer = VQGAN(tok_cfg)
        self.tokenizer.requires_grad_(False)
        self.generator = TokenTransformer(self._transformer_config(config.generator, critic=False))
        self.critic = (
            TokenTransformer(self._transformer_config(config.critic, critic=True))
            if config.critic is not None
            else None
        )
        self.ccm = CCM(tok_cfg, config_from_dict(CCMConfig, config.ccm)) if config.ccm is not None else None

    def _transformer_config(self, data: dict[str, Any], critic: bool) -> TokenTransformerConfig:
        tok = self.tokenizer.config
        cfg = config_from_dict(TokenTransformerConfig, data, where="transformer")
        return dataclasses.replace(cfg, codebook_size=tok.codebook_size, code_dim=tok.code_dim, critic=critic)

    # --- construction for training ---------------------------------------------------------
    @classmethod
    def create(
        cls,
        tokenizer: VQGAN,
        generator: dict[str, Any],
        scale: int = 4,
        lr_patch: int = 32,
        lr_input: str = "tokens",
        stride: int | None = None,
        clamp_lr_up: bool = True,
    ) -> RealSRT:
        """A fresh model around a trained tokenizer (copied in); the generator is untrained."""
        config = RealSRTConfig(
            scale=scale,
            lr_patch=lr_patch,
            stride=stride,
            lr_input=lr_input,
            clamp_lr_up=clamp_lr_up,
            tokenizer=dataclasses.asdict(tokenizer.config),
            generator=dict(generator),
        )
        model = cls(config).to(next(tokenizer.parameters()).device)
        model.tokenizer.load_state_dict(tokenizer.state_dict())
        model.generator.load_codebook(model.tokenizer.quantizer.codebook)
        config.generator = dataclasses.asdict(model.generator.config)
        return model.eval()

    @classmethod
    def from_preset(cls, preset: str, tokenizer: VQGAN, scale: int = 4) -> RealSRT:
        p = PRESETS[preset]
        model = cls.create(
            tokenizer, p.generator, scale=scale, lr_patch=p.lr_patch, stride=p.stride, clamp_lr_up=p.clamp_lr_up
        )
        model.add_critic(p.critic)
        model.add_ccm()
        return model

    def add_critic(self, critic: dict[str, Any]) -> TokenTransformer:
        """Attach a fresh critic (embedding = the tokenizer codebook)."""
        cfg = self._transformer_config(critic, critic=True)
        self.critic = TokenTransformer(cfg).to(self.device)
        self.critic.load_codebook(self.tokenizer.quantizer.codebook)
        self.config.critic = dataclasses.asdict(cfg)
        return self.critic

    def add_ccm(self, ccm: dict[str, Any] | None = None) -> CCM:
        """Attach a fresh CCM whose encoder is a copy of the tokenizer encoder."""
        cfg = config_from_dict(CCMConfig, ccm or {}, where="ccm")
        self.ccm = CCM.from_tokenizer(self.tokenizer, cfg)
        self.config.ccm = dataclasses.asdict(cfg)
        return self.ccm

    # --- pieces ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.generator.codebook.device

    @property
    def scale(self) -> int:
        return self.config.scale

    @property
    def mask_id(self) -> int:
        return self.generator.mask_id

    def upsample(self, lr01: torch.Tensor) -> torch.Tensor:
        """Bicubic x``scale`` upsampling of an LR batch in [0, 1] (clamped back to [0, 1] unless
        ``clamp_lr_up`` is off)."""
        up = F.interpolate(lr01, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return up.clamp(0, 1) if self.config.clamp_lr_up else up

    @torch.no_grad()
    def condition(self, lr01: torch.Tensor, tile: int | None = None, margin: int = 0, exact: bool = True) -> Condition:
        """Upsample and tokenize an LR batch (its size times ``scale`` must be a multiple of f).

        tile, margin: encode in tiles of that many tokens a side plus a margin
        (`tokensr.inference.grid_tiles`), which bounds the encoder's memory on large images;
        None encodes the whole batch in one pass.
        exact: the LR tokens in float32 whatever the autocast (as training made them); False
        lets the tokenizer encoder follow an enclosing autocast (``VQGAN.tokenize``). The
        ``latents`` LR stream is float32 either way."""
        lr_up = self.upsample(lr01)
        f = self.tokenizer.factor
        if lr_up.shape[-2] % f or lr_up.shape[-1] % f:
            raise ValueError(f"upsampled LR {tuple(lr_up.shape[-2:])} is not a multiple of the tokenizer factor {f}")
        grid = (lr_up.shape[-2] // f, lr_up.shape[-1] // f)

        def encode(fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
            return fn(lr_up) if tile is None else map_in_tiles(fn, lr_up, grid, tile, margin, unit_in=f)

        if self.config.lr_input == "tokens":
            ids = encode(lambda x: self.tokenizer.tokenize(x, exact=exact))  # no codebook update
            return Condition(lr_up, ids.flatten(1), grid)

        # the latents also in float32 under autocast (the transformers see the same LR stream)
        def latents(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device_type=x.device.type, enabled=False):
                return self.tokenizer.encode_continuous(self.tokenizer.to_net(x.float()))

        z = encode(latents)
        return Condition(lr_up, z.flatten(2).transpose(1, 2), grid)

    @torch.no_grad()
    def generate(
        self,
        cond: Condition,
        steps: int = 4,
        confidence: str = "critic",
        rounding: str = "ceil",
        temperature: float = 0.0,
        rng: torch.Generator | None = None,
        score_last: bool = True,
    ) -> GenerationResult:
        """Iterative generation of the HR tokens for a conditioned batch (see ``sampling``)."""
        # the LR stream and each block's keys/values of it, once for all steps
        gen_ctx = self.generator.context_kv(self.generator.encode_lr(cond.lr, cond.hw))
        critic_fn = None
        if confidence == "critic":
            if self.critic is None:
                raise ValueError(
                    "this RealSRT model has no critic (train the critic stage or use generator confidence)"
                )
            critic = self.critic
            critic_ctx = critic.context_kv(critic.encode_lr(cond.lr, cond.hw))
            critic_fn = lambda ids: critic.decode_hr(ids, critic_ctx, cond.hw)  # noqa: E731
        return iterative_generate(
            lambda ids, masked: self.generator.decode_hr(ids, gen_ctx, cond.hw, select=masked),
            critic_fn,
            batch=cond.lr.shape[0],
            n_tokens=cond.hw[0] * cond.hw[1],
            mask_id=self.mask_id,
            device=cond.lr.device,
            steps=steps,
            confidence=confidence,
            rounding=rounding,
            temperature=temperature,
            rng=rng,
            score_last=score_last,
        )

    def decode(
        self, ids: torch.Tensor, hw: tuple[int, int], lr_up: torch.Tensor | None = None, clamp: bool = True
    ) -> torch.Tensor:
        """Decode ids ``[B, N]`` to an image in [0, 1]; with ``lr_up`` the CCM steers the decoder.
        ``clamp=False`` returns the decoder's output unclamped (on the [0, 1] scale).

        Not wrapped in no_grad: the CCM stage back-propagates through it.
        """
        z_q = self.tokenizer.quantizer.lookup(ids.view(-1, *hw))
        h = self.tokenizer.post_quant_conv(z_q)
        if lr_up is not None:
            if self.ccm is None:
                raise ValueError("this RealSRT model has no CCM")
            h = self.ccm(h, self.tokenizer.to_net(lr_up))
        out = self.tokenizer.from_net(self.tokenizer.decoder(h))
        return out.clamp(0, 1) if clamp else out

    @torch.no_grad()
    def forward(
        self,
        lr01: torch.Tensor,
        steps: int = 4,
        confidence: str = "critic",
        use_ccm: bool = True,
        rounding: str = "ceil",
        temperature: float = 0.0,
    ) -> torch.Tensor:
        """One batch of LR patches -> HR patches in [0, 1] (no tiling, no colour correction)."""
        cond = self.condition(lr01)
        result = self.generate(cond, steps, confidence, rounding, temperature, score_last=False)
        return self.decode(result.tokens, cond.hw, cond.lr_up if use_ccm else None)
