"""The whole ITER model: tokenizer + LQ encoder + refinement and evaluation networks.

One ``save_pretrained`` folder (``model_type "iter"``) holds everything needed to run it:
the tokenizer's weights sit under the ``tokenizer.`` prefix, the LQ encoder under
``lq_encoder.``, ``phi_r`` under ``refine.`` and ``phi_e`` under ``evaluator.``. The config
also stores the default inference settings (``steps``, the tuned ``alpha``, the schedule), so
a trained model carries its own defaults.

A model from the LQ-encoder stage alone has ``refine = evaluator = None``; it still runs (the
output is the decoded ``S_l``, distortion removal only).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from tokensr.methods.iter.lq_encoder import LQEncoder, LQEncoderConfig, lr_multiple, resample_log2
from tokensr.methods.iter.refine import EvaluationNet, RefinementNet, TokenNetConfig
from tokensr.methods.iter.sampling import SCHEDULES, START_RULES, RefineResult, adaptive_refine
from tokensr.nn.vqgan import VQGAN, VQGANConfig
from tokensr.pretrained import PretrainedMixin, config_from_dict


@dataclass(frozen=True)
class Preset:
    """Network sizes and the HR training crop; the tokenizer is chosen separately."""

    lq_encoder: dict[str, Any]
    refine: dict[str, Any]
    evaluator: dict[str, Any]
    crop_size: int  # HR crop side for training


# The Swin layers of the authors' released networks (SwinIR-style SwinLayers: 3x3 convs in and
# out with a residual, MLP ratio 4 with a squeeze-and-excitation gate).
_RELEASED_SWIN: dict[str, Any] = dict(heads=8, window=8, mlp_ratio=4.0, mlp_se=True, swin_convs=True)
# ... and the released phi_r / phi_e around them (tokensr.methods.iter.refine explains each switch).
_RELEASED_TOKEN_NET: dict[str, Any] = dict(dim=256, groups=4, depth=6, onehot_conv=True, combine_bias=False)

PRESETS: dict[str, Preset] = {
    # The authors' released networks layer for layer (chaofengc/ITER; `tokensr convert` maps
    # their checkpoints one to one): LQ encoder 64 ch, input in [0, 1], LeakyReLU ResNet blocks,
    # SwinLayers of 2 groups x 6 at the code width (128), bare 1x1 head; phi_r / phi_e 256 wide,
    # SwinLayers of 4 groups x 6, window 8. Meant for ITER's Swin-VQGAN, the VQGAN preset `iter`
    # (configs/iter_tokenizer_paper.yaml). 256-px HR crops.
    "paper": Preset(
        dict(
            ch=64,
            res_blocks=2,
            dim=128,
            groups=2,
            depth=6,
            signed_input=False,
            act="leaky_relu",
            head_norm=False,
            **_RELEASED_SWIN,
        ),
        dict(**_RELEASED_TOKEN_NET, **_RELEASED_SWIN, cond_first=True, lq_flag="mask_row"),
        dict(**_RELEASED_TOKEN_NET, **_RELEASED_SWIN, mask_token=False),
        crop_size=256,
    ),
    # CPU: with the bundled f=4 tokenizer, 128-px HR crops -> 32x32 LR -> 32x32 tokens.
    "small": Preset(
        dict(ch=64, res_blocks=1, dim=128, groups=2, depth=4, heads=4, window=8),
        dict(dim=128, groups=2, depth=4, heads=4, window=8),
        dict(dim=96, groups=1, depth=4, heads=4, window=8),
        crop_size=128,
    ),
    # tests only
    "tiny": Preset(
        dict(ch=8, res_blocks=1, dim=16, groups=1, depth=2, heads=2, window=4),
        dict(dim=16, groups=1, depth=2, heads=2, window=4),
        dict(dim=16, groups=1, depth=2, heads=2, window=4),
        crop_size=32,
    ),
}


@dataclass
class ITERConfig:
    scale: int = 4
    steps: int = 8  # default T at inference
    alpha: float = 0.5  # default threshold of Eq. 6 (the value tuned on the eval set)
    schedule: str = "linear"  # inference mask schedule
    # token-grid sides are padded to a multiple of this (8 for the released model, as its code
    # pads images so the Swin windows tile the grid exactly; 1: only to whole tokens)
    token_multiple: int = 1
    # how Algorithm 2 picks the start step: "paper" (as printed) or "reference" (the released
    # code: one step fewer, none when S_l is good enough); tokensr.methods.iter.sampling
    start_rule: str = "paper"
    tokenizer: dict[str, Any] = field(default_factory=dict)  # VQGANConfig as a dict
    lq_encoder: dict[str, Any] = field(default_factory=dict)  # LQEncoderConfig as a dict
    refine: dict[str, Any] | None = None  # TokenNetConfig of phi_r (None until trained)
    evaluator: dict[str, Any] | None = None  # TokenNetConfig of phi_e


class ITER(nn.Module, PretrainedMixin):
    config_class: ClassVar[type] = ITERConfig
    model_type: ClassVar[str] = "iter"

    def __init__(self, config: ITERConfig) -> None:
        super().__init__()
        if config.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got '{config.schedule}'")
        if config.start_rule not in START_RULES:
            raise ValueError(f"start_rule must be one of {START_RULES}, got '{config.start_rule}'")
        self.config = config
        tok_cfg = config_from_dict(VQGANConfig, config.tokenizer)
        self.tokenizer = VQGAN(tok_cfg)
        self.tokenizer.requires_grad_(False)
        self.tokenizer.eval()
        self.lq_encoder = LQEncoder(self._lq_config(config.lq_encoder))
        config.lq_encoder = dataclasses.asdict(self.lq_encoder.config)
        self.refine: RefinementNet | None = None
        self.evaluator: EvaluationNet | None = None
        if config.refine is not None:
            self.refine = RefinementNet(self._net_config(config.refine))
            config.refine = dataclasses.asdict(self.refine.config)
        if config.evaluator is not None:
            self.evaluator = EvaluationNet(self._net_config(config.evaluator))
            config.evaluator = dataclasses.asdict(self.evaluator.config)

    def _lq_config(self, data: dict[str, Any]) -> LQEncoderConfig:
        tok = self.tokenizer.config
        cfg = config_from_dict(LQEncoderConfig, data, where="lq_encoder")
        return dataclasses.replace(
            cfg, codebook_size=tok.codebook_size, resample=resample_log2(tok.factor, self.config.scale)
        )

    def _net_config(self, data: dict[str, Any]) -> TokenNetConfig:
        cfg = config_from_dict(TokenNetConfig, data, where="token network")
        return dataclasses.replace(cfg, codebook_size=self.tokenizer.config.codebook_size)

    # --- construction for training -----------------------------------------------------------
    @classmethod
    def create(
        cls,
        tokenizer: VQGAN,
        lq_encoder: dict[str, Any],
        scale: int = 4,
        steps: int = 8,
        alpha: float = 0.5,
    ) -> ITER:
        """A fresh model around a trained tokenizer (its weights are copied in)."""
        config = ITERConfig(
            scale=scale,
            steps=steps,
            alpha=alpha,
            tokenizer=dataclasses.asdict(tokenizer.config),
            lq_encoder=dict(lq_encoder),
        )
        model = cls(config).to(next(tokenizer.parameters()).device)
        model.tokenizer.load_state_dict(tokenizer.state_dict())
        return model.eval()

    @classmethod
    def from_preset(cls, preset: str, tokenizer: VQGAN, scale: int = 4) -> ITER:
        """All three networks at a preset's sizes (untrained) around ``tokenizer``."""
        p = PRESETS[preset]
        model = cls.create(tokenizer, p.lq_encoder, scale=scale)
        model.add_refine(p.refine)
        model.add_evaluator(p.evaluator)
        return model

    def add_refine(self, cfg: dict[str, Any]) -> RefinementNet:
        self.refine = RefinementNet(self._net_config(cfg)).to(self.device)
        self.config.refine = dataclasses.asdict(self.refine.config)
        return self.refine

    def add_evaluator(self, cfg: dict[str, Any]) -> EvaluationNet:
        self.evaluator = EvaluationNet(self._net_config(cfg)).to(self.device)
        self.config.evaluator = dataclasses.asdict(self.evaluator.config)
        return self.evaluator

    def train(self, mode: bool = True) -> ITER:
        """As ``nn.Module.train``, but the frozen tokenizer stays in eval mode (its EMA
        codebook must never update here)."""
        super().train(mode)
        self.tokenizer.eval()
        return self

    # --- pieces ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.tokenizer.decoder.conv_out.weight.device

    @property
    def scale(self) -> int:
        return self.config.scale

    @property
    def factor(self) -> int:
        return self.tokenizer.factor

    @property
    def mask_id(self) -> int:
        return self.tokenizer.config.codebook_size

    @property
    def lr_multiple(self) -> int:
        """LR sides must be multiples of this (so the HR side is a multiple of f, and the token
        grid a multiple of ``token_multiple``)."""
        return lr_multiple(self.factor * self.config.token_multiple, self.scale)

    @property
    def can_refine(self) -> bool:
        return self.refine is not None and self.evaluator is not None

    def _check_lr(self, lr01: torch.Tensor) -> None:
        m = self.lr_multiple
        if lr01.shape[-2] % m or lr01.shape[-1] % m:
            raise ValueError(
                f"LR size {tuple(lr01.shape[-2:])} is not a multiple of {m} (f={self.factor}, x{self.scale})"
            )

    def lq_logits(self, lr01: torch.Tensor) -> torch.Tensor:
        """``E_l``: token logits ``[B, K, h*s/f, w*s/f]`` of an LR batch in [0, 1]."""
        self._check_lr(lr01)
        return self.lq_encoder(lr01)

    @torch.no_grad()
    def lq_tokens(self, lr01: torch.Tensor) -> torch.Tensor:
        """``S_l``: the LQ encoder's argmax tokens ``[B, h', w']``."""
        return self.lq_logits(lr01).argmax(1)

    def decode_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Token map ``[B, h, w]`` -> image in [0, 1]. (``S_h``, the HR image's own tokens, is
        ``self.tokenizer.tokenize(hr01)``.)"""
        return self.tokenizer.from_net(self.tokenizer.decode_indices(ids)).clamp(0, 1)

    def decode_onehot(self, onehot: torch.Tensor) -> torch.Tensor:
        """Soft/one-hot code weights ``[B, K, h, w]`` -> image in [0, 1], differentiable in the weights."""
        codebook = self.tokenizer.quantizer.codebook
        z = torch.einsum("bkhw,kd->bdhw", onehot.to(codebook.dtype), codebook)
        return ((self.tokenizer.decode(z) + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def restore(
        self,
        lr01: torch.Tensor,
        steps: int | None = None,
        alpha: float | None = None,
        adaptive: bool = True,
        sample: bool = False,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        record: bool = False,
    ) -> RefineResult:
        """Algorithm 2 on an LR batch: ``S_l = E_l(I_l)`` then adaptive refinement.

        Without refinement networks (LQ-encoder stage only) the result is ``S_l`` with 0 steps.
        """
        lq = self.lq_tokens(lr01)
        if not self.can_refine:
            b = lq.shape[0]
            return RefineResult(
                lq, torch.zeros(b, dtype=torch.long, device=lq.device), torch.ones_like(lq, dtype=torch.bool), lq
            )
        refine, evaluator = self.refine, self.evaluator
        assert refine is not None and evaluator is not None
        return adaptive_refine(
            lq,
            lambda s, lq, g: refine(s, lq, g),
            lambda s, lq: evaluator.good_prob(s, lq),
            mask_id=self.mask_id,
            steps=self.config.steps if steps is None else steps,
            alpha=self.config.alpha if alpha is None else alpha,
            schedule=self.config.schedule,
            adaptive=adaptive,
            sample=sample,
            temperature=temperature,
            generator=generator,
            record=record,
            start_rule=self.config.start_rule,
        )

    @torch.no_grad()
    def forward(self, lr01: torch.Tensor, steps: int | None = None, alpha: float | None = None) -> torch.Tensor:
        """One LR batch (sides multiples of :attr:`lr_multiple`) -> HR images in [0, 1]."""
        return self.decode_tokens(self.restore(lr01, steps, alpha).tokens)


__all__ = ["ITER", "ITERConfig", "PRESETS", "Preset"]
