"""Distil RealSRT's pixel path into a faster one (``task: realsrt_distill``). Not in the paper.

After generation RealSRT spends most of its time in two convolutional networks that run at the
output resolution: the VQGAN decoder and the CCM's encoder (a copy of the tokenizer encoder
that reads the bicubic-upsampled LR image). This stage trains a *student* RealSRT whose

- decoder is narrower (``decoder_ch``, the base width: e.g. 16 against the teacher's 32,
  about a quarter of the decoder's multiply-adds), and/or whose
- CCM encoder copy is narrower (``ccm_encoder_ch``, e.g. 16 against 32),

to reproduce the *teacher*'s image (``init``, a trained RealSRT). Everything else (tokenizer
encoder and codebook, generator, critic, the CCM's fusion layers) is the teacher's, frozen, so
the student makes the same tokens and only its pixels may differ.

One step: HR crops and their degraded LR partners (``data``, as the CCM stage's); the tokens
are the HR crop's own (``tokens: gt``, cheap) or generated from the LR (``tokens: generated``,
what inference decodes); the teacher decodes them, steered by its CCM, and the student decodes
them steered by its own. Losses (``losses``)::

    image: 1.0     # L1 between the student's and the teacher's decoder outputs
    features: 0.1  # L1 between the two CCM encoders' features (when it is narrowed)

Init: each narrow network starts as the teacher's leading channels of every tensor (the first
``ch * m`` channels of each layer, so the GroupNorm groups line up). The export is a complete
RealSRT folder (``tokensr upscale --method realsrt --weights FOLDER``).

Task config keys (``task_config``)::

    init: realsrt-small-x4       # the teacher: a RealSRT folder or bundled name
    decoder_ch: 16               # the student decoder's base width (null: keep the teacher's)
    ccm_encoder_ch: 16           # the student CCM encoder's base width (null: keep the teacher's)
    tokens: gt                   # gt | generated
    steps: 2                     # generation steps when tokens = generated
    losses: {image: 1.0, features: 0.1}
    data: {...}, val: {...}      # as every task's
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tokensr.errors import OptionError
from tokensr.methods.realsrt.model import RealSRT
from tokensr.methods.realsrt.train import load_init
from tokensr.nn import losses as L
from tokensr.train.base import TaskBase, trainable_parameters
from tokensr.train.batches import image_rows
from tokensr.train.options import check_choice

DISTILL_LOSS_DEFAULTS: dict[str, Any] = {"image": 1.0, "features": 0.1}


def copy_leading_channels(student: nn.Module, teacher: nn.Module) -> None:
    """Fill every tensor of ``student`` with the leading entries of the teacher's tensor of the
    same name along every axis (a narrower network keeps the first channels of each layer)."""
    source = teacher.state_dict()
    with torch.no_grad():
        for name, value in student.state_dict().items():
            if name not in source:
                raise ValueError(f"the teacher has no tensor '{name}'")
            t = source[name]
            if t.dim() != value.dim() or any(s > n for s, n in zip(value.shape, t.shape, strict=True)):
                raise ValueError(f"'{name}': {tuple(value.shape)} is not a slice of the teacher's {tuple(t.shape)}")
            value.copy_(t[tuple(slice(0, s) for s in value.shape)])


def student_model(teacher: RealSRT, decoder_ch: int | None, ccm_encoder_ch: int | None) -> RealSRT:
    """A RealSRT with the teacher's weights but a ``decoder_ch``-wide decoder and/or a
    ``ccm_encoder_ch``-wide CCM encoder, each the leading channels of the teacher's."""
    if teacher.ccm is None and ccm_encoder_ch is not None:
        raise OptionError("ccm_encoder_ch: the teacher has no CCM")
    config = copy.deepcopy(teacher.config)
    if decoder_ch is not None:
        config.tokenizer["decoder_ch"] = int(decoder_ch)
    if ccm_encoder_ch is not None:
        assert config.ccm is not None
        config.ccm = {**config.ccm, "encoder_ch": int(ccm_encoder_ch)}
    try:
        student = RealSRT(config).to(teacher.device)
    except (TypeError, ValueError) as e:
        raise OptionError(f"bad student option: {e}") from e
    # every tensor of the teacher's shape is the teacher's (in the narrowed networks too, where
    # it equals its own leading slice), then the narrowed ones get their leading channels
    own = student.state_dict()
    same = {k: v for k, v in teacher.state_dict().items() if k in own and own[k].shape == v.shape}
    student.load_state_dict(same, strict=False)
    try:
        if decoder_ch is not None:
            copy_leading_channels(student.tokenizer.decoder, teacher.tokenizer.decoder)
        if ccm_encoder_ch is not None:
            assert student.ccm is not None and teacher.ccm is not None
            copy_leading_channels(student.ccm.encoder, teacher.ccm.encoder)
    except ValueError as e:
        raise OptionError(f"the student must be narrower than the teacher: {e}") from e
    return student.eval()


class DistillTask(TaskBase):
    """Train a narrower decoder and/or CCM encoder to reproduce a RealSRT (the teacher)."""

    name = "realsrt_distill"
    keys = ("init", "decoder_ch", "ccm_encoder_ch", "tokens", "steps", "losses")
    val_count = 8
    val_images = 2
    degradation = "realesrgan"

    def __init__(self, cfg: Mapping[str, Any], device: torch.device | str) -> None:
        super().__init__(cfg, device)
        init = self.cfg.get("init")
        if init is None:
            raise OptionError("realsrt_distill needs init: the teacher RealSRT folder or bundled name")
        self.teacher = load_init(init).to(self.device)
        self.teacher.requires_grad_(False).eval()
        decoder_ch, enc = (self._width(key) for key in ("decoder_ch", "ccm_encoder_ch"))
        if decoder_ch is None and enc is None:
            raise OptionError("realsrt_distill: give decoder_ch and/or ccm_encoder_ch (there is nothing to distil)")
        self.student = student_model(self.teacher, decoder_ch, enc)
        self.student.requires_grad_(False)
        self.trained: dict[str, nn.Module] = {}
        if decoder_ch is not None:
            self.trained["decoder"] = self.student.tokenizer.decoder
        if enc is not None:
            assert self.student.ccm is not None
            self.trained["ccm_encoder"] = self.student.ccm.encoder
        for m in self.trained.values():
            m.requires_grad_(True)
        self.tokens = check_choice("tokens", self.cfg.get("tokens", "gt"), ("gt", "generated"))
        self.steps = int(self.cfg.get("steps", 2))
        self.loss_weights = self.read_losses(DISTILL_LOSS_DEFAULTS)
        self.confidence = "critic" if self.teacher.critic is not None else "generator"
        self.freeze()

    def _width(self, key: str) -> int | None:
        value = self.cfg.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise OptionError(f"{key} must be a positive whole number of channels, got {value!r}")
        return value

    # --- engine contract -----------------------------------------------------------------------
    def frozen_modules(self) -> list[nn.Module]:
        """The teacher, and every part of the student that is the teacher's."""
        trained = [id(m) for m in self.trained.values()]

        def parts(module: nn.Module) -> list[nn.Module]:
            if id(module) in trained:
                return []
            if not any(id(m) in trained for m in module.modules()):
                return [module]
            return [p for child in module.children() for p in parts(child)]

        return [self.teacher, *parts(self.student)]

    def modules(self) -> dict[str, nn.Module]:
        return dict(self.trained)

    def ema_modules(self) -> list[str]:
        return list(self.trained)

    def param_groups(self) -> dict[str, Iterable[nn.Parameter]]:
        return {"g": trainable_parameters(*self.trained.values())}

    def export(self, folder: str) -> None:
        self.student.save_pretrained(folder)

    # --- data ----------------------------------------------------------------------------------
    def crop_size(self, data: Mapping[str, Any]) -> int:
        crop = self.teacher.config.lr_patch * self.teacher.scale
        if "crop_size" in data and int(data["crop_size"]) != crop:
            raise OptionError(f"data.crop_size {data['crop_size']}: RealSRT crops lr_patch x scale = {crop} px")
        return crop

    def data_scale(self) -> int | None:
        return self.teacher.scale

    # --- losses --------------------------------------------------------------------------------
    @torch.no_grad()
    def _teacher(self, hr: torch.Tensor, lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The decoder input ``h`` of the tokens, the LR image in the network's range and the
        teacher's CCM features (None without a CCM)."""
        t = self.teacher
        if self.tokens == "gt":
            ids = t.tokenizer.tokenize(hr)
            lr_up = t.upsample(lr)
        else:
            cond = t.condition(lr)
            ids = t.generate(cond, self.steps, self.confidence, score_last=False).tokens.view(-1, *cond.hw)
            lr_up = cond.lr_up
        h = t.tokenizer.post_quant_conv(t.tokenizer.quantizer.lookup(ids))
        net_lr = t.tokenizer.to_net(lr_up)
        return h, net_lr, (t.ccm.encoder(net_lr) if t.ccm is not None else None)

    def _decode(self, model: RealSRT, h: torch.Tensor, feats: torch.Tensor | None) -> torch.Tensor:
        if model.ccm is not None and feats is not None:
            h = model.ccm.fuse(h, feats)
        return model.tokenizer.from_net(model.tokenizer.decoder(h))

    def _outputs(
        self, hr: torch.Tensor, lr: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(teacher image, student image, feature pairs) on the [0, 1] scale, unclamped."""
        h, net_lr, feats = self._teacher(hr, lr)
        with torch.no_grad():
            target = self._decode(self.teacher, h, feats)
        pairs: dict[str, torch.Tensor] = {}
        own = feats
        if "ccm_encoder" in self.trained:
            assert self.student.ccm is not None and feats is not None
            own = self.student.ccm.encoder(net_lr)
            pairs = {"student": own, "teacher": feats}
        return target, self._decode(self.student, h, own), pairs

    def losses(self, batch: dict[str, torch.Tensor], step: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        self.keep_frozen()
        hr, lr, _ = self.inputs(batch)
        assert lr is not None
        target, out, pairs = self._outputs(hr, lr)
        image = F.l1_loss(out.float(), target.float())
        loss = float(self.loss_weights["image"]) * image
        logs = {"image_l1": image.item(), "psnr_vs_teacher": L.psnr(out.detach().clamp(0, 1), target.clamp(0, 1))}
        if pairs:
            feat = F.l1_loss(pairs["student"].float(), pairs["teacher"].float())
            loss = loss + float(self.loss_weights["features"]) * feat
            logs["features_l1"] = feat.item()
        return {"g": loss}, logs

    def evaluate(self, batch: dict[str, torch.Tensor], step: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        hr, lr = batch["hr"], batch["lr"]
        target, out, _ = self._outputs(hr, lr)
        target, out = target.clamp(0, 1), out.clamp(0, 1)
        metrics = {"psnr_vs_teacher": L.psnr(out, target), "psnr_teacher": L.psnr(target, hr), "psnr": L.psnr(out, hr)}
        return metrics, {"teacher_student_hr": image_rows([target, out, hr], self.val.images)}


__all__ = ["DISTILL_LOSS_DEFAULTS", "DistillTask", "copy_leading_channels", "student_model"]
