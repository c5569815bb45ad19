"""RealSRT's conditional controlling module (CCM, paper sec. 3.3).

The generated HR tokens alone lose the exact colours and fine layout of the input. The CCM
lets the LR image steer the frozen VQGAN decoder: a trainable copy ``E'`` of the tokenizer
encoder reads the bicubic-upsampled LR image, its features are concatenated with the decoder
input ``h = post_quant_conv(z_q)``, pass a ResBlock -> self-attention -> ResBlock, and a
zero-initialised 1x1 conv maps them back to ``h``'s channels and adds them::

    h' = h + ZeroConv(Res(Attn(Res([h, E'(lr_up)]))))

Because the zero conv starts at exactly zero, ``h' == h`` before training: the module starts
as the identity and cannot hurt the pretrained decoder. Only the CCM is trained (VQGAN losses);
the tokenizer and the masked transformer stay frozen.

``CCMConfig(encoder_ch=...)`` narrows ``E'`` for speed (not in the paper): tokensr distils a
narrower copy from a trained CCM (:mod:`tokensr.methods.realsrt.distill`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from tokensr.nn.blocks import AttnBlock, ResnetBlock
from tokensr.nn.vqgan import VQGAN, Encoder, VQGANConfig


@dataclass
class CCMConfig:
    attention: bool = True  # self-attention between the two residual blocks (paper: yes)
    # the encoder copy's base width (None: the tokenizer's ch, as the paper); a narrower copy
    # is distilled from a trained CCM (tokensr.methods.realsrt.distill)
    encoder_ch: int | None = None


class CCM(nn.Module):
    def __init__(self, tokenizer_config: VQGANConfig, config: CCMConfig | None = None) -> None:
        super().__init__()
        self.config = config or CCMConfig()
        c = tokenizer_config.code_dim
        width = self.config.encoder_ch or tokenizer_config.ch
        # a trainable copy of the tokenizer encoder (same layout, maybe narrower)
        self.encoder = Encoder(dataclasses.replace(tokenizer_config, ch=width))
        self.res1 = ResnetBlock(2 * c, 2 * c)
        self.attn = AttnBlock(2 * c) if self.config.attention else nn.Identity()
        self.res2 = ResnetBlock(2 * c, 2 * c)
        self.zero_conv = nn.Conv2d(2 * c, c, 1)
        nn.init.zeros_(self.zero_conv.weight)
        assert self.zero_conv.bias is not None  # a Conv2d made with bias=True
        nn.init.zeros_(self.zero_conv.bias)

    @classmethod
    def from_tokenizer(cls, tokenizer: VQGAN, config: CCMConfig | None = None) -> CCM:
        """A CCM whose encoder starts as an exact copy of ``tokenizer.encoder`` (a narrower
        one starts at random)."""
        ccm = cls(tokenizer.config, config)
        if ccm.config.encoder_ch in (None, tokenizer.config.ch):
            ccm.encoder.load_state_dict(tokenizer.encoder.state_dict())
        return ccm.to(next(tokenizer.parameters()).device)

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the zero conv: the layer the adaptive GAN weight is computed on."""
        return self.zero_conv.weight

    def forward(self, h: torch.Tensor, lr_up: torch.Tensor) -> torch.Tensor:
        """``h``: decoder input ``[B, code_dim, H/f, W/f]``; ``lr_up``: upsampled LR in the
        tokenizer's range (``VQGAN.to_net``: [-1, 1], or [0, 1] for the authors' tokenizer)."""
        return self.fuse(h, self.encoder(lr_up))

    def fuse(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The CCM given the encoder's LR features ``cond = self.encoder(lr_up)`` (so a caller
        can encode a whole image once and fuse window by window)."""
        if cond.shape[-2:] != h.shape[-2:]:
            raise ValueError(f"CCM: LR features {tuple(cond.shape[-2:])} do not match tokens {tuple(h.shape[-2:])}")
        r = self.res2(self.attn(self.res1(torch.cat([h, cond], dim=1))))
        return h + self.zero_conv(r)
